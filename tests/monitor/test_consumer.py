"""`ecg-monitor alerts`: JSON lines when piped, a table on a terminal, a device filter."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt

from monitor.broker import BrokerAddress, ClientOptions, connect
from monitor.consumer import Event
from monitor.simulate import read_ground_truth
from tests.brokers import Mosquitto

ROOT = Path(__file__).resolve().parents[2]


def alert(device: str, seq: int) -> dict[str, object]:
    now = time.time()
    return {
        "device_id": device, "seq": seq, "ts": now - 0.01, "score": 41.25, "threshold": 26.0,
        "model": "m", "model_version": "v", "peak_index": 63,
        "received_at": now - 0.005, "published_at": now,
    }  # fmt: skip


def publish_until_exit(
    broker: Mosquitto, proc: subprocess.Popen[bytes], topics: list[tuple[str, dict[str, object]]]
) -> None:
    """Publish the given messages over and over until the consumer has seen enough and exits."""
    client = connect(ClientOptions(BrokerAddress(broker.host, broker.port)), "alert-source")
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            for topic, payload in topics:
                client.publish(topic, json.dumps(payload), qos=1)
            time.sleep(0.1)
    finally:
        client.disconnect()
        client.loop_stop()


def consumer_cmd(broker: Mosquitto, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "monitor", "alerts",
        "--broker", f"{broker.host}:{broker.port}", "--duration", "30", *extra,
    ]  # fmt: skip


def test_piped_output_is_json_lines_filtered_by_device(mosquitto: Mosquitto) -> None:
    proc = subprocess.Popen(
        consumer_cmd(mosquitto, "--prefix", "c1", "--device", "dev-a", "--count", "4"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    publish_until_exit(
        mosquitto,
        proc,
        [("c1/dev-a/alert", alert("dev-a", 7)), ("c1/dev-b/alert", alert("dev-b", 8))],
    )
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 4
    for line in lines:
        obj = json.loads(line)
        assert (obj["device_id"], obj["seq"], obj["score"]) == ("dev-a", 7, 41.25)


def test_terminal_output_is_an_aligned_table_with_rejects(mosquitto: Mosquitto) -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        consumer_cmd(mosquitto, "--prefix", "c2", "--rejects", "--count", "2"),
        stdout=secondary,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    os.close(secondary)
    reject = {"device_id": "dev-r", "code": "bad_json", "reason": "unparsable", "payload_b64": ""}
    try:
        publish_until_exit(
            mosquitto,
            proc,
            [("c2/dev-r/rejected", reject), ("c2/dev-a/alert", alert("dev-a", 12345))],
        )
        proc.wait(timeout=10)
        text = b""
        while select.select([primary], [], [], 0.5)[0]:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            text += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0
    lines = text.decode().replace("\r\n", "\n").splitlines()
    assert lines[0].split() == ["time", "device", "seq", "score", "thresh", "peak", "delay", "ms"]
    alert_rows = [line for line in lines[1:] if "dev-a" in line]
    assert alert_rows, lines
    assert alert_rows[0].split()[1:6] == ["dev-a", "12345", "41.25", "26.00", "63"]
    # columns line up under the header
    assert alert_rows[0].index("12345") + 5 == lines[0].index("seq") + 3
    assert any("REJECTED bad_json: unparsable" in line for line in lines)
    assert not any(line.lstrip().startswith("{") for line in lines)


def test_events_from_foreign_topics_or_payloads_are_ignored() -> None:
    assert Event.from_message("ecg/d1/alert", b'{"seq": 1}', "ecg", 0.0) is not None
    assert Event.from_message("other/d1/alert", b'{"seq": 1}', "ecg", 0.0) is None
    assert Event.from_message("ecg/d 1/alert", b'{"seq": 1}', "ecg", 0.0) is None
    assert Event.from_message("ecg/d1/window", b'{"seq": 1}', "ecg", 0.0) is None
    assert Event.from_message("ecg/d1/alert", b"\xff", "ecg", 0.0) is None
    assert Event.from_message("ecg/d1/alert", b"[1]", "ecg", 0.0) is None


MODEL = ROOT / "models" / "ecg-synthetic-dense.onnx"
DAEMON_TOML = """\
[mqtt]
host = "{host}"
port = {port}
client_id = "ecg-monitor-e2e-{tag}"
topic_prefix = "{prefix}"
session_expiry_s = 0

[model]
path = "{model}"

[service]
instance_id = "e2e-{tag}"
drain_timeout_s = 5.0
log_format = "json"
"""


def wait_online(broker: Mosquitto, instance_id: str, timeout: float = 60.0) -> None:
    seen = threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if json.loads(msg.payload).get("state") == "online":
            seen.set()

    client = connect(
        ClientOptions(BrokerAddress(broker.host, broker.port)),
        f"status-{instance_id}",
        on_message=on_message,
        subscriptions=[(f"ecg-monitor/{instance_id}/status", 1)],
    )
    try:
        assert seen.wait(timeout), "the daemon did not come online"
    finally:
        client.disconnect()
        client.loop_stop()


def test_simulate_daemon_alerts_end_to_end(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """simulate -> daemon -> alerts on a real mosquitto: every alert is a sent window, and the
    alerted windows are the anomalous ones of the ground truth."""
    tag = uuid.uuid4().hex[:8]
    prefix = f"e2e{tag}"
    config = tmp_path / "monitor.toml"
    config.write_text(
        DAEMON_TOML.format(
            host=mosquitto.host, port=mosquitto.port, tag=tag, prefix=prefix, model=MODEL
        )
    )
    broker = ["--broker", f"{mosquitto.host}:{mosquitto.port}", "--prefix", prefix]
    daemon = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    alerts = None
    try:
        wait_online(mosquitto, f"e2e-{tag}")
        alerts = subprocess.Popen(
            [sys.executable, "-m", "monitor", "alerts", *broker, "--duration", "60"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert alerts.stderr is not None
        assert alerts.stderr.readline().startswith(b"alerts: listening on")
        truth = tmp_path / "truth.csv"
        fleet = "--devices 3 --rate 50 --count 60 --anomaly-fraction 0.3 --seed 11 --format binary"
        sim = subprocess.run(
            [
                *(sys.executable, "-m", "monitor", "simulate", *broker, *fleet.split()),
                *("--ground-truth", str(truth), "--quiet"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sim.returncode == 0, sim.stderr
        rows = {(r.device_id, r.seq): r for r in read_ground_truth(truth)}
        anomalous = {k for k, r in rows.items() if r.is_anomaly}
        time.sleep(2.0)  # the last alerts are on their way
        alerts.send_signal(signal.SIGINT)  # Ctrl-C ends the consumer cleanly
        out, err = alerts.communicate(timeout=10)
        assert alerts.returncode == 0, err
    finally:
        for proc in (alerts, daemon):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
    assert daemon.returncode == 0
    got = [json.loads(line) for line in out.decode().splitlines()]
    keys = {(a["device_id"], a["seq"]) for a in got}
    assert len(rows) == 180 and len(anomalous) >= 30
    assert keys <= rows.keys()
    assert all(a["score"] > a["threshold"] for a in got)
    assert len(keys & anomalous) >= 0.9 * len(anomalous)
    assert len(keys - anomalous) <= 0.1 * len(keys)
