"""deploy/README.md's install steps are true of this checkout: nothing from an index that does
not have it, and the model it installs is the one the shipped config names and `make models`
writes."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "deploy" / "README.md").read_text()


def test_the_package_is_installed_from_a_checkout_or_a_wheel_not_an_index() -> None:
    installs = re.findall(r"pip install ([^\s#]+)", README)
    assert installs, "no pip install step"
    assert all(target == "." or target.endswith(".whl") for target in installs), installs


def test_the_model_step_installs_the_file_the_shipped_config_names() -> None:
    line = next(x for x in README.splitlines() if x.startswith("MODEL=$(python3 -c "))
    code = shlex.split(line.removeprefix("MODEL=$(").removesuffix(")"))[2]
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    )
    model = done.stdout.strip()
    config = tomllib.loads((ROOT / "configs" / "monitor.toml").read_text())
    assert model == config["model"]["path"]
    assert (ROOT / "configs" / model).resolve().is_file(), model


def test_make_models_writes_the_model_the_shipped_config_names() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    config = tomllib.loads((ROOT / "configs" / "monitor.toml").read_text())
    written = (ROOT / "configs" / config["model"]["path"]).resolve().relative_to(ROOT)
    commands = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", "models"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    assert f"--out {written}" in commands, commands
