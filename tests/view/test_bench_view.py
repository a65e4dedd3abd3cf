"""bench/view.py runs end to end with tiny settings and prints its table (numbers not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_bench_view_smoke() -> None:
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    args = ["--devices", "4", "--seconds", "2", "--warmup", "1", "--chunk-s", "0.5", "--no-write"]
    out = subprocess.run(
        [sys.executable, "bench/view.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| view server (`ecg-monitor view`), % of one core |" in out.stdout
    assert "| chromium, all processes, % of one core |" in out.stdout
