"""The training modules import each other without cycles (evaluate and plots used to)."""

from __future__ import annotations

import ast
from pathlib import Path

TRAINING = Path(__file__).resolve().parents[2] / "training"


def _training_imports(path: Path) -> set[str]:
    """Modules of `training` this file imports anywhere, function-level imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("training."))
        elif isinstance(node, ast.ImportFrom) and node.module == "training":
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("training."):
            found.add((node.module or "").split(".")[1])
    return found


def test_no_import_cycle_among_training_modules() -> None:
    graph = {p.stem: _training_imports(p) - {p.stem} for p in TRAINING.glob("*.py")}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph.get(module, ())):
            if dep in path:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in done:
                visit(dep, [*path, dep])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, [module])
    assert cycles == []


def test_the_graph_sees_function_level_imports() -> None:
    assert "plots" in _training_imports(TRAINING / "evaluate.py")
    assert "metrics" in _training_imports(TRAINING / "plots.py")
