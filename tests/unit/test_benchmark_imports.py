"""The benchmark scripts import what the package still has: `make bench` runs them rarely, so a
renamed or moved name must fail here, not at the end of a long benchmark run."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _package_imports(path: Path) -> list[tuple[str, str]]:
    """Every ``from stream_lstm... import name`` of ``path``, at any depth (functions included)."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stream_lstm")
        for alias in node.names
    ]


@pytest.mark.parametrize("script", sorted(BENCHMARKS.rglob("*.py")), ids=lambda path: path.name)
def test_every_name_a_benchmark_imports_from_the_package_exists(script: Path) -> None:
    missing = [
        f"{module}.{name}"
        for module, name in _package_imports(script)
        if not hasattr(importlib.import_module(module), name)
        and importlib.util.find_spec(f"{module}.{name}") is None
    ]
    assert not missing, f"{script.name} imports names the package no longer has: {missing}"
