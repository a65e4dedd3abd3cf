"""The runtime package points one way: `monitor` imports nothing from `training` (nor torch)."""

from __future__ import annotations

import ast
from pathlib import Path

MONITOR = Path(__file__).resolve().parents[2] / "monitor"
FORBIDDEN = ("training", "torch", "onnx")


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_monitor_imports_nothing_from_training_or_torch() -> None:
    offenders = {
        str(p.relative_to(MONITOR.parent)): sorted(_imported_roots(p) & set(FORBIDDEN))
        for p in sorted(MONITOR.rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
