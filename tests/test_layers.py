"""The packages form layers that import downward only (docs/architecture.md):
retrieval → datamodules → lightning_modules → callbacks → experiments."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["retrieval", "datamodules", "lightning_modules", "callbacks", "experiments"]
RANK = {name: rank for rank, name in enumerate(LAYERS)}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every absolute import in a module, top-level and inside functions alike, as ``(line, module)``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def upward_imports(package: str) -> list[str]:
    rank = RANK[package]
    problems = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, module in imported_modules(ast.parse(path.read_text(), str(path))):
            target = RANK.get(module.split(".")[0])
            if target is not None and target > rank:
                problems.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return problems


@pytest.mark.parametrize("package", LAYERS)
def test_no_upward_import(package: str) -> None:
    assert upward_imports(package) == []


def test_the_walk_finds_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a function-level import of a higher layer is caught."""
    source = "def f():\n    from experiments.train import run\n    return run\n"
    assert imported_modules(ast.parse(source)) == [(2, "experiments.train")]
