"""The dependency direction of docs/architecture.md, checked on the code's own imports.

* no import circle between modules (imports at module level) nor between packages;
* the learner and the models never import Kafka, Prometheus, the service or telemetry;
* the Kafka loop (``kafka/``, ``service/``) never imports torch, at any level, and importing it
  in a fresh interpreter leaves torch unloaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import stream_lstm

PACKAGE = Path(stream_lstm.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, *, module_level_only: bool) -> Iterator[str]:
    """The modules ``name`` imports (absolute names; ``from a import b`` gives ``a.b`` when that
    is a module of the package, else ``a``)."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                yield child if child in MODULES else node.module
        elif isinstance(node, ast.If) and module_level_only:
            continue  # `if TYPE_CHECKING:` blocks are not imports at run time


def internal_graph(*, module_level_only: bool) -> dict[str, set[str]]:
    return {
        name: {target for target in imports(name, module_level_only=module_level_only) if target in MODULES}
        for name in MODULES
    }


def package_of(name: str) -> str:
    parts = name.split(".")
    return (
        ".".join(parts[:2])
        if len(parts) > 2 or name in {f"stream_lstm.{p.name}" for p in PACKAGE.iterdir() if p.is_dir()}
        else name
    )


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_imports_itself_back() -> None:
    assert find_cycle(internal_graph(module_level_only=True)) is None


def test_no_package_imports_itself_back() -> None:
    packages: dict[str, set[str]] = {}
    for source, targets in internal_graph(module_level_only=True).items():
        edges = packages.setdefault(package_of(source), set())
        edges.update(package_of(target) for target in targets if package_of(target) != package_of(source))
    assert find_cycle(packages) is None


def reachable(start: str, *, module_level_only: bool) -> set[str]:
    """Every module (internal or external, by top-level name) that importing ``start`` reaches."""
    seen: set[str] = set()
    external: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for target in imports(name, module_level_only=module_level_only):
            if target in MODULES:
                todo.append(target)
                # importing a.b.c runs a/__init__.py and a/b/__init__.py first
                parent = target
                while "." in parent:
                    parent = parent.rsplit(".", 1)[0]
                    if parent in MODULES:
                        todo.append(parent)
            else:
                external.add(target.split(".")[0])
    return seen | external


def in_packages(*packages: str) -> list[str]:
    return [name for name in MODULES if any(name.startswith(f"stream_lstm.{p}.") for p in packages)]


FORBIDDEN_FOR_THE_LEARNER = {"kafka", "confluent_kafka", "prometheus_client"}
KAFKA_SIDE = ("stream_lstm.kafka", "stream_lstm.service", "stream_lstm.telemetry")


@pytest.mark.parametrize("name", in_packages("learner", "models"))
def test_the_learner_and_models_never_import_kafka_or_prometheus(name: str) -> None:
    reached = reachable(name, module_level_only=False)
    assert not reached & FORBIDDEN_FOR_THE_LEARNER
    assert not [module for module in reached if module.startswith(KAFKA_SIDE)]


@pytest.mark.parametrize("name", in_packages("kafka", "service"))
def test_the_kafka_loop_never_imports_torch_itself(name: str) -> None:
    assert "torch" not in {target.split(".")[0] for target in imports(name, module_level_only=False)}
    assert "torch" not in reachable(name, module_level_only=True)


def test_importing_the_kafka_loop_leaves_torch_unloaded() -> None:
    loop = " ".join(f"import {name};" for name in in_packages("kafka", "service"))
    check = "import sys; print(sorted(m for m in ('torch', 'river') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", loop + check], capture_output=True, text=True, check=True)
    assert "torch" not in result.stdout, result.stdout


def test_importing_the_learner_leaves_kafka_and_prometheus_unloaded() -> None:
    learner = " ".join(f"import {name};" for name in in_packages("learner", "models"))
    forbidden = sorted(FORBIDDEN_FOR_THE_LEARNER)
    check = f"import sys; print(sorted(m for m in {forbidden!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", learner + check], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_nothing_but_tests_imports_the_test_helpers() -> None:
    """``stream_lstm.testing`` (a scripted client, Apache Kafka for tests) is never a dependency
    of the service, at any level: it needs what only the dev extra installs."""
    graph = internal_graph(module_level_only=False)
    users = {
        name
        for name, targets in graph.items()
        if not name.startswith("stream_lstm.testing")
        and any(target.startswith("stream_lstm.testing") for target in targets)
    }
    assert users == set()
