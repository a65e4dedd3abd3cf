"""The Makefile says what it is doing before each slow step of `make demo` and `make test`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(*targets: str) -> list[str]:
    """The commands `make` would run for `targets` if everything were out of date."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", *targets],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return done.stdout.splitlines()


@pytest.mark.parametrize("target", ["demo", "test"])
def test_every_pip_step_is_announced_and_the_big_ones_show_progress(target: str) -> None:
    lines = _dry_run(target)
    pip_steps = [i for i, line in enumerate(lines) if "pip install" in line]
    assert pip_steps, lines
    for i in pip_steps:
        assert lines[i - 1].startswith("echo "), f"no echo before {lines[i]!r}"
        if "--upgrade pip" not in lines[i]:
            assert " -q " not in lines[i] and "--progress-bar on" in lines[i], lines[i]
    assert any(line.startswith("echo ") and "ready" in line for line in lines)
