"""deploy/systemd/ecg-monitor.service: accepted by systemd-analyze, consistent with the daemon."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from monitor.service import EXIT_STARTUP

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "ecg-monitor.service"
SHIPPED_EXEC = "/opt/ecg-monitor/venv/bin/ecg-monitor"


def directives() -> dict[str, list[str]]:
    """Key -> every value, in order (systemd allows repeated keys)."""
    out: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert m, value
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


def local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's entry point (verify checks it exists)."""
    exe = Path(sys.executable).parent / "ecg-monitor"
    if not exe.exists():
        pytest.skip("ecg-monitor entry point not installed in this environment")
    text = UNIT.read_text()
    assert SHIPPED_EXEC in text
    path = tmp_path / UNIT.name
    path.write_text(text.replace(SHIPPED_EXEC, str(exe)))
    return path


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = local_unit(tmp_path)
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    ours = [line for line in (r.stdout + r.stderr).splitlines() if unit.name in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def test_systemd_analyze_verify_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    """The same check flags a misspelt directive, so a clean result above means something."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = local_unit(tmp_path)
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "WatchdogSecs" in r.stdout + r.stderr


def test_hardening_exposure_stays_low(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(local_unit(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    if m is None:
        pytest.skip(f"this systemd-analyze has no offline security report: {r.stderr[:200]}")
    assert float(m.group(1)) <= 2.0, r.stdout


def test_unit_matches_the_daemons_contract() -> None:
    d = directives()
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert seconds(d["WatchdogSec"][0]) >= 5
    assert d["Restart"] == ["on-failure"]
    # a start-up failure (bad config/model) will not fix itself: no restart loop on it
    assert d["RestartPreventExitStatus"] == [str(EXIT_STARTUP)]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["ExecStart"][0].endswith("ecg-monitor run --config /etc/ecg-monitor/monitor.toml")
    assert all(v.startswith("-") for v in d["EnvironmentFile"])
    # systemd must not SIGKILL a drain that the daemon would finish in time
    cfg = tomllib.loads((ROOT / "configs" / "monitor.toml").read_text())
    drain = float(cfg["service"]["drain_timeout_s"])
    assert seconds(d["TimeoutStopSec"][0]) >= drain + 5
    for key, value in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
    ]:
        assert d[key] == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    assert d["ReadOnlyPaths"]
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


TEMPLATE = ROOT / "deploy" / "systemd" / "ecg-monitor@.service"


def _body(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_instance_template_is_the_unit_with_per_instance_config_cache_and_name() -> None:
    """ecg-monitor@.service (N instances on one host) differs from the single unit only in
    its description, config file, cache directory and CUDA cache, all keyed by %i."""
    single, template = _body(UNIT.read_text()), _body(TEMPLATE.read_text())
    assert len(single) == len(template)
    changed = {(a, b) for a, b in zip(single, template, strict=True) if a != b}
    assert {b.split("=", 1)[0] for _, b in changed} == {
        "Description",
        "ExecStart",
        "Environment",
        "CacheDirectory",
    }
    assert all("%i" in b for _, b in changed)
    assert f"ExecStart={SHIPPED_EXEC} run --config /etc/ecg-monitor/monitor-%i.toml" in template


def test_systemd_analyze_verify_accepts_an_instance_of_the_template(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).parent / "ecg-monitor"
    if not exe.exists():
        pytest.skip("ecg-monitor entry point not installed in this environment")
    (tmp_path / "ecg-monitor@.service").write_text(
        TEMPLATE.read_text().replace(SHIPPED_EXEC, str(exe))
    )
    unit = tmp_path / "ecg-monitor@2.service"
    unit.symlink_to(tmp_path / "ecg-monitor@.service")
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    ours = [line for line in (r.stdout + r.stderr).splitlines() if "ecg-monitor@" in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr
