"""The benchmark scripts import what the package still has: `make bench` runs them rarely, so a
renamed or moved name must fail here, not at the end of a long benchmark run."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _package_imports(path: Path) -> list[tuple[str, str | None]]:
    """Every ``from stream_lstm... import name`` (module, name) and ``import stream_lstm...``
    (module, None) of ``path``, at any depth (functions included)."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "stream_lstm":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "stream_lstm"]
    return found


def _exists(module: str, name: str | None) -> bool:
    """Whether ``module`` can be imported and, for a name, has it (as an attribute or submodule)."""
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError:
        return False
    if name is None or hasattr(imported, name):
        return True
    return hasattr(imported, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None


@pytest.mark.parametrize("script", sorted(BENCHMARKS.rglob("*.py")), ids=lambda path: path.name)
def test_every_name_a_benchmark_imports_from_the_package_exists(script: Path) -> None:
    missing = [
        module if name is None else f"{module}.{name}"
        for module, name in _package_imports(script)
        if not _exists(module, name)
    ]
    assert not missing, f"{script.name} imports names the package no longer has: {missing}"
