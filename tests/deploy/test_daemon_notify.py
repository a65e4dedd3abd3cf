"""The daemon as systemd runs it: Type=notify over a real NOTIFY_SOCKET, the watchdog, SIGTERM,
and W^X memory (the unit's MemoryDenyWriteExecute=yes, reproduced with PR_SET_MDWE)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from monitor.wire import encode_json
from tests.brokers import Mosquitto
from tests.monitor.daemon import ROOT, Collector, Daemon, Publisher, write_config
from tests.onnx_models import build_model, windows

pytestmark = pytest.mark.timeout(120)

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
# Applies W^X to this process, then execs the daemon (the setting survives execve).
LAUNCH = f"""
import ctypes, os, sys
if os.environ.get("ECG_TEST_MDWE") == "1":
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
        sys.exit("PR_SET_MDWE failed: errno %d" % ctypes.get_errno())
    print("mdwe flags", libc.prctl({PR_SET_MDWE + 1}, 0, 0, 0, 0), flush=True)
os.execv(sys.executable, [sys.executable, "-m", "monitor", "run", "--config", sys.argv[1]])
"""


class LaunchedDaemon(Daemon):
    """The daemon started through LAUNCH, with extra environment."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        super().__init__(config)
        self.env = env

    def start(self) -> LaunchedDaemon:
        self.log_path = self.config.with_suffix(f".{time.monotonic_ns()}.log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(self.config)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        return self


@dataclass
class NotifyListener:
    """The service manager's end of NOTIFY_SOCKET: every datagram with its arrival time."""

    path: Path
    messages: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def lines(self) -> list[tuple[float, str]]:
        with self._lock:
            return [(t, line) for t, m in self.messages for line in m.split("\n")]

    def when(self, line: str) -> list[float]:
        return [t for t, x in self.lines() if x == line]

    def wait(self, line: str, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := self.when(line):
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no {line} on NOTIFY_SOCKET; got {self.lines()}")

    def close(self) -> None:
        self._stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    nl = NotifyListener(tmp_path / "notify.sock")
    yield nl
    nl.close()


def scored(col: Collector) -> set[tuple[str, int]]:
    return {(r["device_id"], r["seq"] + i) for r in col.of("/score") for i in range(r["count"])}


def run_daemon(
    tmp_path: Path, broker: Mosquitto, env: dict[str, str]
) -> tuple[LaunchedDaemon, Collector]:
    model = build_model(tmp_path / "model.onnx")
    config = write_config(
        tmp_path / "monitor.toml", broker.port, model, alerts={"publish_scores": True}
    )
    col = Collector(broker.port, ["ecg/+/score"])
    return LaunchedDaemon(config, env).start(), col


def test_ready_watchdog_and_stopping_over_notify_socket(
    tmp_path: Path, mosquitto: Mosquitto, listener: NotifyListener
) -> None:
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "400000"}
    daemon, col = run_daemon(tmp_path, mosquitto, env)
    try:
        ready_at = listener.wait("READY=1")
        # READY means subscribed: a QoS 0 window published right now (never queued for an
        # absent subscription) is scored.
        pub = Publisher(mosquitto.port)
        pub.publish("ecg/notify-dev/window", encode_json(7, 0.0, windows(1)[0]), qos=0)
        pub.close()
        col.wait_for(lambda: ("notify-dev", 7) in scored(col), 20, "window after READY scored")
        deadline = time.monotonic() + 30
        while len([t for t in listener.when("WATCHDOG=1") if t > ready_at]) < 4:
            assert time.monotonic() < deadline, listener.lines()
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.output()
            time.sleep(0.05)
        assert not listener.when("STOPPING=1")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.output()[-3000:]
        stopping = listener.wait("STOPPING=1", timeout=1)
        assert stopping > ready_at
        assert listener.when("READY=1") == [ready_at]  # ready once, never again while stopping
    finally:
        daemon.stop()
        col.close()


def test_no_watchdog_pings_for_another_pid(
    tmp_path: Path, mosquitto: Mosquitto, listener: NotifyListener
) -> None:
    """WATCHDOG_PID names the process systemd watches; a different one must not ping."""
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    daemon, col = run_daemon(tmp_path, mosquitto, env)
    try:
        listener.wait("READY=1")
        time.sleep(0.5)
        assert not listener.when("WATCHDOG=1")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.output()[-3000:]
    finally:
        daemon.stop()
        col.close()


def _mdwe_supported() -> bool:
    """PR_SET_MDWE (Linux >= 6.3) in a throwaway child, so this process stays unaffected."""
    code = f"import ctypes,sys; sys.exit(ctypes.CDLL(None).prctl({PR_SET_MDWE}, 1, 0, 0, 0) != 0)"
    return subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_daemon_scores_with_write_xor_execute_memory(
    tmp_path: Path, mosquitto: Mosquitto, listener: NotifyListener
) -> None:
    """The unit sets MemoryDenyWriteExecute=yes: ONNX Runtime (CPU), numpy and paho cope."""
    if not _mdwe_supported():
        pytest.skip("kernel without PR_SET_MDWE")
    env = {"NOTIFY_SOCKET": str(listener.path), "ECG_TEST_MDWE": "1"}
    daemon, col = run_daemon(tmp_path, mosquitto, env)
    try:
        listener.wait("READY=1")
        assert "mdwe flags 1" in daemon.output()  # PR_GET_MDWE: refuse-exec-gain is on
        pub = Publisher(mosquitto.port)
        x = windows(50, seed=4)
        for seq in range(50):
            pub.publish("ecg/wx/window", encode_json(seq, float(seq), x[seq]))
        pub.close()
        col.wait_for(lambda: len(scored(col)) == 50, 30, "50 windows scored under W^X")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.output()[-3000:]
    finally:
        daemon.stop()
        col.close()


def test_mdwe_really_refuses_writable_executable_memory() -> None:
    """The W^X reproduction is real: the same prctl makes a W+X mapping fail."""
    if not _mdwe_supported():
        pytest.skip("kernel without PR_SET_MDWE")
    code = (
        f"import ctypes, mmap; ctypes.CDLL(None).prctl({PR_SET_MDWE}, 1, 0, 0, 0)\n"
        "mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert r.returncode != 0 and b"PermissionError" in r.stderr
