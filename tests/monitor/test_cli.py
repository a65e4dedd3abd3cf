"""`ecg-monitor` command line: --version, and help that shows every default and speaks to users."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import monitor
from monitor.cli import build_parser, package_version
from tests.cli_help import check_help

ROOT = Path(__file__).resolve().parents[2]


def test_every_subcommand_shows_its_defaults_and_a_description_for_users() -> None:
    check_help(build_parser(), "ecg-monitor")


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"ecg-monitor {package_version()}\n"
    try:
        assert package_version() == importlib.metadata.version("ecg-monitor")
    except importlib.metadata.PackageNotFoundError:  # a checkout that was never installed
        assert package_version() == monitor.__version__


def test_source_version_matches_pyproject() -> None:
    """monitor.__version__ (the fallback) and pyproject.toml say the same version."""
    import tomllib  # noqa: PLC0415

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert monitor.__version__ == project["version"]


def test_version_from_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "--version"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.stdout.startswith("ecg-monitor ") and done.stdout.split()[1][0].isdigit()
