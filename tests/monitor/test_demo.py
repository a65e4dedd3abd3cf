"""`ecg-monitor demo` end to end, and Ctrl-C at any moment leaving no process or port behind."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO

import pytest

from monitor.consumer import Event
from monitor.demo import Tally
from monitor.simulate import SentWindow

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "ecg-synthetic-dense.onnx"


def survivors(tag: str) -> list[int]:
    """Live processes (not zombies) whose environment carries `tag`: the demo's descendants."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if tag.encode() not in (entry / "environ").read_bytes():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def port_free(port: int) -> bool:
    """Nothing listens on the port (connections in TIME_WAIT are not a process left behind)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class DemoProcess:
    """The demo as a child process with a unique environment tag; its stdout (the alert stream)
    and its stderr (start-up, progress and summary lines) read into lists as they come."""

    def __init__(self, *args: str) -> None:
        self.tag = f"ECG_DEMO_TEST_TAG={uuid.uuid4().hex}"
        key, value = self.tag.split("=")
        cmd = [sys.executable, "-m", "monitor", "demo", "--model", str(MODEL), *args]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, key: value, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()  # stderr lines not yet waited for
        self.out: list[str] = []  # stdout
        self.err: list[str] = []  # stderr
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, False), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, True), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream: IO[bytes] | None, is_err: bool) -> None:
        assert stream is not None
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            (self.err if is_err else self.out).append(line)
            if is_err:
                self.lines.put(line)

    def wait_for(self, prefix: str, timeout: float = 60.0) -> str:
        """The next stderr line starting with `prefix`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                assert self.proc.poll() is None or not self.lines.empty(), self.stderr()
                continue
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting {prefix!r} in {self.err}")

    def finish(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(timeout=10)
        return code

    def stderr(self) -> str:
        return "\n".join(self.err)


def broker_port(line: str) -> int:
    m = re.search(r"127\.0\.0\.1:(\d+)", line)
    assert m, line
    return int(m.group(1))


def test_demo_runs_and_scores_against_ground_truth(tmp_path: Path) -> None:
    """A few seconds of the demo: live alerts, every window scored, precision and recall."""
    summary_file, truth_file = tmp_path / "summary.json", tmp_path / "truth.csv"
    demo = DemoProcess(
        "--duration", "4", "--devices", "5", "--rate", "10",
        "--summary-json", str(summary_file), "--ground-truth", str(truth_file),
    )  # fmt: skip
    try:
        port = broker_port(demo.wait_for("broker"))
        code = demo.finish()
    finally:
        demo.proc.kill()
    assert code == 0, demo.stderr()
    text = demo.stderr()
    assert "precision" in text and "recall" in text
    s = json.loads(summary_file.read_text())
    assert s["windows_sent"] >= 100
    assert s["windows_scored"] == s["windows_sent"]
    assert len(truth_file.read_text().splitlines()) == s["windows_sent"] + 1
    assert s["true_positives"] + s["false_negatives"] == s["anomalous_sent"]
    # stdout is a pipe here: the live view printed each alert as a JSON line, and nothing else.
    alerts = [json.loads(line) for line in demo.out]
    assert len({(a["device_id"], a["seq"]) for a in alerts}) == s["alerts"]
    # The bundled model separates the simulator's anomalies.
    assert s["precision"] >= 0.9 and s["recall"] >= 0.9, s
    assert survivors(demo.tag) == []
    assert port_free(port)


def test_demo_on_amqtt_runs_the_daemon_in_mqtt_311(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    demo = DemoProcess(
        "--embedded-broker", "amqtt", "--duration", "2", "--devices", "3", "--rate", "10",
        "--no-live", "--summary-json", str(summary_file),
    )  # fmt: skip
    try:
        assert "amqtt" in demo.wait_for("broker")
        assert "3.1.1" in demo.wait_for("note:")
        code = demo.finish()
    finally:
        demo.proc.kill()
    assert code == 0, demo.stderr()
    s = json.loads(summary_file.read_text())
    assert s["windows_sent"] > 0 and s["windows_scored"] == s["windows_sent"]
    assert survivors(demo.tag) == []


@pytest.mark.parametrize("moment", ["at-once", "broker-up", "daemon-starting", "mid-run"])
def test_ctrl_c_at_any_moment_leaves_nothing_behind(moment: str) -> None:
    demo = DemoProcess("--duration", "30", "--devices", "3", "--rate", "20")
    port = None
    try:
        if moment == "at-once":
            time.sleep(0.3)
        else:
            port = broker_port(demo.wait_for("broker"))
            if moment in ("daemon-starting", "mid-run"):
                demo.wait_for("daemon")
            if moment == "mid-run":
                demo.wait_for("fleet")
                time.sleep(1.5)
        demo.proc.send_signal(signal.SIGINT)
        code = demo.finish(timeout=40)
    finally:
        demo.proc.kill()
    assert code in (130, -signal.SIGINT), demo.stderr()
    assert survivors(demo.tag) == []
    if port is not None:
        assert port_free(port)
    if moment == "mid-run":
        assert any("interrupted" in line for line in demo.err)


def test_the_summary_names_the_broker_that_really_ran(tmp_path: Path) -> None:
    """Not "mosquitto (embedded)": the program, its version and path, and who started it."""
    summary_file = tmp_path / "summary.json"
    demo = DemoProcess(
        "--embedded-broker", "mosquitto", "--duration", "1", "--devices", "2", "--rate", "5",
        "--no-live", "--summary-json", str(summary_file),
    )  # fmt: skip
    try:
        port = broker_port(demo.wait_for("broker"))
        code = demo.finish()
    finally:
        demo.proc.kill()
    assert code == 0, demo.stderr()
    exe = shutil.which("mosquitto")
    version = subprocess.run(
        [str(exe), "-h"], check=False, capture_output=True, text=True
    ).stdout.split()[2]
    want = f"mosquitto {version} from {exe}, started by the demo on port {port}"
    assert json.loads(summary_file.read_text())["broker"] == want
    assert f"broker          {want}" in demo.stderr()
    assert demo.out == []  # --no-live: nothing on stdout at all


def test_progress_counts_alerts_among_the_scored_windows() -> None:
    """An alert that arrives before its window's score report is not counted ahead of it."""
    tally = Tally()
    rows = [SentWindow("d1", seq, label=1, sent_at=0.0) for seq in range(3)]
    tally.sent(rows)
    for seq in range(3):  # every window alerted, only the first two reported scored yet
        tally.add(Event("alert", "d1", {"seq": seq}, received_at=1.0))
    tally.add(Event("score", "d1", {"seq": 0, "count": 2}, received_at=1.0))
    assert tally.progress() == "... 3 windows sent, 2 scored, 2 of them alerted"
