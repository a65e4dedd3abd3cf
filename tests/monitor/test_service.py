"""The daemon end to end against a real mosquitto: `python -m monitor run --config F` as a child
process, devices and alert consumers as real MQTT clients, real signals."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from monitor.beats import synthetic_beats
from monitor.wire import encode_binary, encode_json
from tests.brokers import Mosquitto, free_port, wait_for_port
from tests.monitor.daemon import (
    ROOT,
    Collector,
    Daemon,
    Publisher,
    wait_online,
    window_keys,
    write_config,
)
from tests.onnx_models import LENGTH, build_model, windows

pytestmark = pytest.mark.timeout(180)


def instance_of(config: Path) -> str:
    return str(tomllib.loads(config.read_text())["service"]["instance_id"])


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return build_model(tmp_path / "model.onnx", threshold=20.0, version="v1")


def start(daemons: list[Daemon], config: Path, collector: Collector) -> Daemon:
    d = Daemon(config).start()
    daemons.append(d)
    try:
        wait_online(collector, instance_of(config))
    except AssertionError:
        raise AssertionError(f"daemon not online:\n{d.output()[-3000:]}") from None
    return d


def scored_keys(collector: Collector) -> list[tuple[str, int]]:
    """(device_id, seq) of every window in the score reports received so far."""
    return [key for r in collector.of("/score") for key in window_keys(r)]


def stream(
    pub: Publisher, devices: int, per_device: int, frame: int = 1, *, seed: int = 1, pace: float = 0
) -> int:
    """Publish per_device windows for each device (QoS 1), `frame` windows per message,
    sleeping `pace` seconds after each round over the devices."""
    x = windows(frame, seed=seed)
    n = 0
    for seq in range(0, per_device, frame):
        for d in range(devices):
            count = min(frame, per_device - seq)
            if count == 1:
                pub.publish(f"ecg/dev{d}/window", encode_json(seq, float(seq), x[0]))
            else:
                pub.publish(f"ecg/dev{d}/window", encode_binary(seq, float(seq), x[:count]))
            n += count
        if pace:
            time.sleep(pace)
    return n


# ------------------------------------------------------------------ 1. alerts


def test_alerts_for_exactly_the_windows_over_threshold_in_every_format(
    tmp_path: Path, mosquitto: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    config = write_config(tmp_path / "c.toml", mosquitto.port, model)
    col = Collector(mosquitto.port, ["ecg/+/alert", "ecg/+/rejected", "ecg-monitor/+/status"])
    start(daemons, config, col)
    rng = np.random.default_rng(5)
    flags = rng.random(90) < 0.3
    x = windows(90, flags, seed=3)
    plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (expected_scores,) = plain.run(["score"], {"windows": x})
    t_before = time.time()
    pub = Publisher(mosquitto.port)
    for i in range(30):  # JSON, one window per message
        pub.publish("ecg/json1/window", encode_json(100 + i, 1000.0 + i, x[i], fs=140.0))
    for j in range(3):  # JSON multi, 10 windows per message
        rows = x[30 + 10 * j : 40 + 10 * j]
        pub.publish("ecg/jsonN/window", encode_json(200 + 10 * j, 2000.0 + j, rows, fs=140.0))
    pub.publish("ecg/bin.1/window", encode_binary(300, 3000.0, x[60:90], fs=140.0))
    pub.close()

    sent: dict[tuple[str, int], tuple[int, float]] = {}
    for i in range(30):
        sent[("json1", 100 + i)] = (i, 1000.0 + i)
    for j in range(3):
        for k in range(10):
            sent[("jsonN", 200 + 10 * j + k)] = (30 + 10 * j + k, 2000.0 + j + k * LENGTH / 140.0)
    for k in range(30):
        sent[("bin.1", 300 + k)] = (60 + k, 3000.0 + k * LENGTH / 140.0)
    expected = {key for key, (row, _) in sent.items() if expected_scores[row] > 20.0}
    assert 10 < len(expected) < 80

    col.wait_for(lambda: len(col.of("/alert")) >= len(expected), 20, "alerts")
    time.sleep(0.3)  # nothing more should come
    alerts = col.of("/alert")
    assert {(a["device_id"], a["seq"]) for a in alerts} == expected
    assert len(alerts) == len(expected)
    assert not col.of("/rejected")
    for a in alerts:
        row, ts = sent[(a["device_id"], a["seq"])]
        assert set(a) == {
            "device_id",
            "seq",
            "ts",
            "score",
            "threshold",
            "model",
            "model_version",
            "peak_index",
            "p_value",
            "received_at",
            "published_at",
        }
        assert a["p_value"] is None  # this model carries no calibration scores
        assert a["ts"] == pytest.approx(ts)
        assert a["score"] == pytest.approx(float(expected_scores[row]), rel=1e-5)
        assert a["threshold"] == 20.0
        assert (a["model"], a["model_version"]) == ("test-affine", "v1")
        recon = plain.run(["reconstruction"], {"windows": x[row : row + 1]})[0][0]
        assert a["peak_index"] == int(np.argmax(np.abs(x[row] - recon)))
        assert t_before <= a["received_at"] <= a["published_at"] <= time.time()
    col.close()


def test_threshold_override_and_alert_policy_from_config(
    tmp_path: Path, mosquitto: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    """threshold from config beats the model's; min_consecutive=2 needs two in a row."""
    config = write_config(
        tmp_path / "c.toml",
        mosquitto.port,
        model,
        model={"threshold": 30.0},
        alerts={"min_consecutive": 2},
    )
    col = Collector(mosquitto.port, ["ecg/pol/alert", "ecg-monitor/+/status"])
    start(daemons, config, col)
    flags = np.array([1, 0, 1, 1, 1, 0, 1], bool)
    x = windows(7, flags, seed=9)
    pub = Publisher(mosquitto.port)
    pub.publish("ecg/pol/window", encode_binary(0, 0.0, x))
    pub.close()
    col.wait_for(lambda: len(col.of("/alert")) >= 2, 20, "alerts")
    time.sleep(0.3)
    alerts = col.of("/alert")
    assert sorted(a["seq"] for a in alerts) == [3, 4]
    assert {a["threshold"] for a in alerts} == {30.0}
    col.close()


def test_daemon_runs_a_model_exported_by_the_training_package(
    tmp_path: Path, mosquitto: Mosquitto, daemons: list[Daemon]
) -> None:
    """ecg-train fit + export (small dense model, synthetic data) -> the daemon alerts on
    exactly the windows whose exported score exceeds the exported threshold."""
    run = tmp_path / "run"
    for argv in (
        [
            "fit",
            "--variant",
            "dense",
            "--data",
            "synthetic:300",
            "--epochs",
            "2",
            "--out",
            str(run),
        ],
        ["export", str(run), "--out", str(tmp_path / "dense.onnx")],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "training", *argv],
            cwd=ROOT,
            capture_output=True,
            check=False,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    model = tmp_path / "dense.onnx"
    config = write_config(tmp_path / "c.toml", mosquitto.port, model)
    col = Collector(mosquitto.port, ["ecg/trained/alert", "ecg-monitor/+/status"])
    start(daemons, config, col)
    x, _ = synthetic_beats(120, anomaly_fraction=0.4, seed=3)
    x = x.astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    threshold = float(session.get_modelmeta().custom_metadata_map["ecg.threshold"])
    (score,) = session.run(["score"], {"windows": x})
    expected = set(np.flatnonzero(score > threshold).tolist())
    assert expected, "the synthetic anomalies should score above the threshold"
    pub = Publisher(mosquitto.port)
    pub.publish("ecg/trained/window", encode_binary(0, 0.0, x))
    pub.close()
    col.wait_for(lambda: len(col.of("/alert")) >= len(expected), 20, "alerts")
    time.sleep(0.3)
    alerts = col.of("/alert")
    assert {a["seq"] for a in alerts} == expected
    assert {a["model_version"] for a in alerts} == {
        session.get_modelmeta().custom_metadata_map["ecg.model_version"]
    }
    col.close()


# ------------------------------------------------------------------ 2. rejects


def test_each_malformed_payload_is_rejected_and_later_windows_still_scored(
    tmp_path: Path, mosquitto: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    config = write_config(
        tmp_path / "c.toml", mosquitto.port, model, limits={"max_payload_bytes": 65536}
    )
    col = Collector(mosquitto.port, ["ecg/+/alert", "ecg/+/rejected", "ecg-monitor/+/status"])
    start(daemons, config, col)
    good = windows(1)[0]
    ok = encode_json(1, 2.0, good).decode()
    v2 = bytearray(encode_binary(1, 2.0, good[None, :]))
    struct.pack_into("<H", v2, 4, 2)
    cases = [
        ("bad_json", "ecg/m1/window", b"{this is not json"),
        ("bad_length", "ecg/m2/window", encode_json(1, 2.0, good[:100])),
        ("non_finite", "ecg/m3/window", ok.replace(str(float(good[5])), "NaN").encode()),
        ("non_finite", "ecg/m3b/window", encode_binary(1, 2.0, np.full((1, LENGTH), np.inf))),
        (
            "bad_field",
            "ecg/m4/window",
            json.dumps({"seq": -1, "ts": 2, "samples": [0] * 140}).encode(),
        ),
        (
            "bad_field",
            "ecg/m5/window",
            json.dumps({"seq": 1, "ts": "x", "samples": [0] * 140}).encode(),
        ),
        ("bad_frame", "ecg/m6/window", bytes(v2)),
        ("too_large", "ecg/m7/window", encode_binary(0, 0.0, np.zeros((200, LENGTH), np.float32))),
        ("bad_device_id", "ecg/bad$id/window", ok.encode()),
        ("bad_device_id", "ecg/" + "d" * 65 + "/window", ok.encode()),
    ]
    pub = Publisher(mosquitto.port)
    anomalous = windows(3, np.ones(3, bool), seed=4)
    for i, (_, topic, payload) in enumerate(cases):
        pub.publish(topic, payload)
        pub.publish("ecg/after/window", encode_json(i, float(i), anomalous[i % 3]))
    pub.close()
    col.wait_for(
        lambda: len(col.of("/rejected")) >= len(cases) and len(col.of("/alert")) >= len(cases),
        20,
        "rejects and alerts",
    )
    rejects = {}
    for topic, r in col.messages:
        if topic.endswith("/rejected"):
            rejects[topic] = r
    for code, topic, payload in cases:
        device = topic.split("/")[1]
        r = rejects[f"ecg/{device}/rejected"]
        assert r["code"] == code, (topic, r)
        assert base64.b64decode(r["payload_b64"]) == payload
        assert r["device_id"] == device
        assert r["reason"]
    assert sorted(a["seq"] for a in col.of("/alert")) == list(range(len(cases)))
    col.close()


# ------------------------------------------------------------------ 3. SIGKILL


def test_sigkill_mid_stream_loses_no_qos1_window(
    tmp_path: Path, fresh_mosquitto: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    broker = fresh_mosquitto
    config = write_config(tmp_path / "c.toml", broker.port, model, alerts={"publish_scores": True})
    col = Collector(broker.port, ["ecg/+/score", "ecg-monitor/+/status"])
    first = start(daemons, config, col)
    pub = Publisher(broker.port)
    total = {"n": 0}
    t = threading.Thread(target=lambda: total.update(n=stream(pub, 4, 1000, frame=1, pace=0.001)))
    t.start()
    col.wait_for(lambda: len(scored_keys(col)) >= 400, 30, "scores before the kill")
    first.signal(signal.SIGKILL)
    first.wait()
    killed_at = len(set(scored_keys(col)))
    status_topic = f"ecg-monitor/{instance_of(config)}/status"
    col.wait_for(
        lambda: [d for t_, d in col.messages if t_ == status_topic][-1]["state"] == "offline",
        10,
        "the last will",
    )
    t.join()
    pub.close()
    assert total["n"] == 4000
    assert killed_at < 4000, "the kill came too late to test anything"
    start(daemons, config, col)
    want = {(f"dev{d}", s) for d in range(4) for s in range(1000)}
    col.wait_for(lambda: want <= set(scored_keys(col)), 60, "every window scored")
    daemons[-1].signal(signal.SIGTERM)
    assert daemons[-1].wait() == 0
    col.close()


def test_broker_restart_mid_stream_reconnects_and_scores_everything(
    tmp_path: Path, fresh_mosquitto: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    """The daemon reconnects with backoff to its persistent session; nothing is lost."""
    broker = fresh_mosquitto
    config = write_config(
        tmp_path / "c.toml",
        broker.port,
        model,
        mqtt={"reconnect_min_s": 0.1, "reconnect_max_s": 1.0},
        alerts={"publish_scores": True},
    )
    col = Collector(broker.port, ["ecg/+/score", "ecg-monitor/+/status"])
    d = start(daemons, config, col)
    pub = Publisher(broker.port)
    stream(pub, 2, 500, frame=5)
    pub.close()
    col.wait_for(lambda: len(scored_keys(col)) >= 1000, 30, "first half scored")
    broker.restart()
    col.close()
    col = Collector(broker.port, ["ecg/+/score", "ecg-monitor/+/status"])
    d.wait_event("mqtt_reconnecting")
    wait_online(col, instance_of(config))  # the retained status survived; the daemon is back
    pub = Publisher(broker.port)
    x = windows(5, seed=1)
    for seq in range(500, 1000, 5):
        for dev in range(2):
            pub.publish(f"ecg/dev{dev}/window", encode_binary(seq, float(seq), x))
    pub.close()
    want = {(f"dev{i}", s) for i in range(2) for s in range(500, 1000)}
    col.wait_for(lambda: want <= set(scored_keys(col)), 60, "second half scored")
    connected = [e for e in d.events() if e.get("event") == "mqtt_connected"]
    assert len(connected) >= 2  # it re-subscribes on every connection, session or not
    col.close()


# ------------------------------------------------------------------ 4. SIGTERM


def test_sigterm_drains_everything_received_then_exits_0(
    tmp_path: Path, fresh_mosquitto: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    broker = fresh_mosquitto
    config = write_config(tmp_path / "c.toml", broker.port, model, alerts={"publish_scores": True})
    col = Collector(broker.port, ["ecg/+/score", "ecg-monitor/+/status"])
    first = start(daemons, config, col)
    pub = Publisher(broker.port)
    t = threading.Thread(target=lambda: stream(pub, 3, 1000, frame=4, pace=0.006))
    t.start()
    col.wait_for(lambda: len(scored_keys(col)) >= 300, 30, "scores before SIGTERM")
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0, first.output()[-3000:]
    stopped = first.wait_event("stopped")
    drained_events = [e["event"] for e in first.events()]
    assert "drained" in drained_events
    assert stopped["windows_received"] == stopped["windows_scored"]
    # everything it received was published (and PUBACKed) before it exited
    col.wait_for(
        lambda: len(set(scored_keys(col))) >= stopped["windows_received"], 5, "published scores"
    )
    assert len(set(scored_keys(col))) == stopped["windows_received"]
    assert stopped["windows_received"] < 3000
    status = [d for t_, d in col.messages if t_.startswith("ecg-monitor/")]
    assert status[-1]["state"] == "offline"
    t.join()
    pub.close()
    # what arrived during the drain was not acknowledged: the next run gets it
    start(daemons, config, col)
    want = {(f"dev{d}", s) for d in range(3) for s in range(1000)}
    col.wait_for(lambda: want <= set(scored_keys(col)), 60, "every window scored")
    col.close()


def test_drain_timeout_exits_1_and_the_unfinished_windows_come_back(
    tmp_path: Path, fresh_mosquitto: Mosquitto, daemons: list[Daemon]
) -> None:
    broker = fresh_mosquitto
    model = build_model(tmp_path / "slow.onnx", slow=1000)  # ~10 ms per batch of 64
    scores = {"publish_scores": True}
    short = write_config(
        tmp_path / "short.toml",
        broker.port,
        model,
        alerts=scores,
        service={"drain_timeout_s": 0.001},
    )
    col = Collector(broker.port, ["ecg/+/score", "ecg-monitor/+/status"])
    first = start(daemons, short, col)
    pub = Publisher(broker.port)
    stream(pub, 2, 3000, frame=500)  # big messages: tens of ms of work left at SIGTERM
    col.wait_for(lambda: len(scored_keys(col)) >= 500, 30, "scoring started")
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 1
    incomplete = first.wait_event("drain_incomplete")
    assert incomplete["open_messages"] > 0
    pub.close()
    again = write_config(
        tmp_path / "again.toml",
        broker.port,
        model,
        alerts=scores,
        mqtt={"client_id": tomllib.loads(short.read_text())["mqtt"]["client_id"]},
    )
    start(daemons, again, col)
    want = {(f"dev{i}", s) for i in range(2) for s in range(3000)}
    col.wait_for(lambda: want <= set(scored_keys(col)), 60, "every window scored")
    col.close()


def test_a_second_sigint_forces_the_exit(
    tmp_path: Path, fresh_mosquitto: Mosquitto, daemons: list[Daemon]
) -> None:
    broker = fresh_mosquitto
    slow = build_model(tmp_path / "slow.onnx", slow=1000)  # ~10 ms per batch of 64
    config = write_config(tmp_path / "c.toml", broker.port, slow, alerts={"publish_scores": True})
    col = Collector(broker.port, ["ecg/+/score", "ecg-monitor/+/status"])
    d = start(daemons, config, col)
    pub = Publisher(broker.port)
    stream(pub, 4, 2000, frame=100)  # seconds of work received before the signals
    col.wait_for(lambda: len(scored_keys(col)) >= 100, 30, "scoring started")
    d.signal(signal.SIGINT)
    time.sleep(0.05)
    d.signal(signal.SIGINT)
    assert d.wait(10) == 1
    events = [e["event"] for e in d.events()]
    assert "force_exit" in events and "drain_incomplete" in events
    pub.close()
    col.close()


# ------------------------------------------------------------------ 5. SIGHUP


def test_sighup_swaps_the_model_without_losing_windows_and_keeps_it_on_a_bad_file(
    tmp_path: Path, mosquitto: Mosquitto, daemons: list[Daemon]
) -> None:
    path = build_model(tmp_path / "model.onnx", version="v1")
    config = write_config(
        tmp_path / "c.toml", mosquitto.port, path, alerts={"publish_scores": True}
    )
    col = Collector(mosquitto.port, ["ecg/hup/+", "ecg-monitor/+/status"])
    d = start(daemons, config, col)
    anomalous = windows(8, np.ones(8, bool), seed=2)
    pub = Publisher(mosquitto.port)
    stop = threading.Event()
    sent = {"n": 0}

    def run() -> None:
        seq = 0
        while not stop.is_set():
            pub.publish("ecg/hup/window", encode_binary(seq, float(seq), anomalous))
            seq += 8
            time.sleep(0.005)
        sent["n"] = seq

    t = threading.Thread(target=run)
    t.start()
    col.wait_for(lambda: len(col.of("/alert")) >= 40, 20, "v1 alerts")
    build_model(tmp_path / "next.onnx", version="v2")
    os.replace(tmp_path / "next.onnx", path)
    d.signal(signal.SIGHUP)
    d.wait_event("model_reloaded")
    col.wait_for(lambda: col.of("/alert")[-1]["model_version"] == "v2", 20, "v2 alerts")
    path.write_bytes(b"\x08\x07 definitely not onnx")
    d.signal(signal.SIGHUP)
    failed = d.wait_event("model_reload_failed")
    assert failed["keeping"] == "v2"
    n_before = len(col.of("/alert"))
    col.wait_for(lambda: len(col.of("/alert")) >= n_before + 40, 20, "alerts after bad reload")
    stop.set()
    t.join()
    pub.close()
    want = sent["n"]
    col.wait_for(lambda: len(col.of("/alert")) >= want, 20, "all alerts")
    versions = [a["model_version"] for a in sorted(col.of("/alert"), key=lambda a: a["seq"])]
    assert sorted({a["seq"] for a in col.of("/alert")}) == list(range(want))
    switch = versions.index("v2")
    assert set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {"v2"}
    assert d.proc is not None and d.proc.poll() is None
    online = [m for t_, m in col.messages if t_.startswith("ecg-monitor/")][-1]
    assert online["model_version"] == "v2"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    col.close()


def test_a_changed_model_file_is_reloaded_when_watched(
    tmp_path: Path, mosquitto: Mosquitto, daemons: list[Daemon]
) -> None:
    path = build_model(tmp_path / "model.onnx", version="v1")
    config = write_config(tmp_path / "c.toml", mosquitto.port, path, model={"watch_s": 0.1})
    col = Collector(mosquitto.port, ["ecg/watch/alert", "ecg-monitor/+/status"])
    d = start(daemons, config, col)
    build_model(tmp_path / "next.onnx", version="v2", threshold=21.0)
    os.replace(tmp_path / "next.onnx", path)
    reloaded = d.wait_event("model_reloaded")
    assert (reloaded["previous"], reloaded["model_version"]) == ("v1", "v2")
    pub = Publisher(mosquitto.port)
    pub.publish("ecg/watch/window", encode_binary(0, 0.0, windows(2, np.ones(2, bool))))
    pub.close()
    col.wait_for(lambda: len(col.of("/alert")) >= 2, 20, "alerts")
    assert {(a["model_version"], a["threshold"]) for a in col.of("/alert")} == {("v2", 21.0)}
    col.close()


# ------------------------------------------------------------------ 6. shared subscription


def test_two_instances_on_a_shared_subscription_split_the_stream(
    tmp_path: Path, mosquitto: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    configs = [
        write_config(
            tmp_path / f"c{i}.toml",
            mosquitto.port,
            model,
            mqtt={"share_group": "g"},
            alerts={"publish_scores": True},
        )
        for i in range(2)
    ]
    col = Collector(mosquitto.port, ["ecg/+/score", "ecg-monitor/+/status"])
    instances = [start(daemons, c, col) for c in configs]
    pub = Publisher(mosquitto.port)
    n = stream(pub, 6, 300, frame=1)
    pub.close()
    want = {(f"dev{d}", s) for d in range(6) for s in range(300)}
    col.wait_for(lambda: want <= set(scored_keys(col)), 60, "every window scored")
    counts = []
    for d in instances:
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0
        counts.append(d.wait_event("stopped")["windows_scored"])
    assert all(c > 0 for c in counts), counts
    assert sum(counts) >= n
    col.close()


# ------------------------------------------------------------------ systemd, auth, MQTT 3.1.1


def test_systemd_notifications_ready_watchdog_reload_stopping(
    tmp_path: Path, mosquitto: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.settimeout(20)
    config = write_config(tmp_path / "c.toml", mosquitto.port, model)
    d = Daemon(config).start(env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
    daemons.append(d)

    def until(field: str) -> list[str]:
        seen: list[str] = []
        while True:
            msg = server.recv(4096).decode().splitlines()
            seen.extend(msg)
            if field in msg:
                return seen

    until("READY=1")  # model warm, subscription acknowledged
    until("WATCHDOG=1")
    until("WATCHDOG=1")
    d.signal(signal.SIGHUP)
    reload_msgs = until("READY=1")
    assert "RELOADING=1" in reload_msgs
    d.signal(signal.SIGTERM)
    assert "STOPPING=1" in until("STOPPING=1")
    assert d.wait(30) == 0
    server.close()


AUTH_CONFIG = """\
per_listener_settings true
listener {port} 127.0.0.1
allow_anonymous true
listener %d 127.0.0.1
allow_anonymous false
password_file {data_dir}/passwd
max_inflight_messages 1000
max_queued_messages 0
persistence false
log_dest file {data_dir}/mosquitto.log
"""


def test_username_password_from_env_over_mqtt_311(
    tmp_path: Path, model: Path, daemons: list[Daemon]
) -> None:
    """A password-protected listener, MQTT 3.1.1, the password from an environment variable;
    a wrong password is refused and retried, never crashes the daemon."""
    auth_port = free_port()
    # mosquitto drops root for its own user before it reads the password file: pytest's
    # tmp_path (mode 0700) is out of its reach
    data = Path(tempfile.mkdtemp(prefix="ecg-auth-"))
    data.chmod(0o755)
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(data / "passwd"), "monitor", "pw-123"], check=True
    )
    (data / "passwd").chmod(0o644)
    broker = Mosquitto(data_dir=data, config_text=AUTH_CONFIG % auth_port).start()
    try:
        wait_for_port("127.0.0.1", auth_port)
        col = Collector(broker.port, ["ecg/auth/alert", "ecg-monitor/+/status"])
        wrong = write_config(
            tmp_path / "wrong.toml",
            auth_port,
            model,
            mqtt={"protocol": 311, "username": "monitor", "password_env": "ECG_PW"},
        )
        bad = Daemon(wrong).start(env={"ECG_PW": "nope"})
        daemons.append(bad)
        bad.wait_event("mqtt_refused")
        assert bad.proc is not None and bad.proc.poll() is None
        bad.signal(signal.SIGTERM)
        bad.wait(30)
        config = write_config(
            tmp_path / "c.toml",
            auth_port,
            model,
            mqtt={"protocol": 311, "username": "monitor", "password_env": "ECG_PW"},
        )
        d = Daemon(config).start(env={"ECG_PW": "pw-123"})
        daemons.append(d)
        wait_online(col, instance_of(config))
        pub = Publisher(broker.port)
        pub.publish("ecg/auth/window", encode_binary(0, 0.0, windows(4, np.ones(4, bool))))
        pub.close()
        col.wait_for(lambda: len(col.of("/alert")) >= 4, 20, "alerts")
        assert "pw-123" not in d.output()
        col.close()
    finally:
        broker.stop()
        shutil.rmtree(data, ignore_errors=True)


TLS_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
listener %d 127.0.0.1
cafile {data_dir}/ca.crt
certfile {data_dir}/server.crt
keyfile {data_dir}/server.key
max_inflight_messages 1000
max_queued_messages 0
persistence false
"""


def _make_certs(d: Path) -> None:
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=ecg-test-ca")  # fmt: skip
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    for f in d.iterdir():
        f.chmod(0o644)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_to_the_broker_with_a_ca_file(
    tmp_path: Path, model: Path, daemons: list[Daemon]
) -> None:
    tls_port = free_port()
    data = Path(tempfile.mkdtemp(prefix="ecg-tls-"))
    data.chmod(0o755)
    _make_certs(data)
    broker = Mosquitto(data_dir=data, config_text=TLS_CONFIG % tls_port).start()
    try:
        wait_for_port("127.0.0.1", tls_port)
        col = Collector(broker.port, ["ecg/tls/alert", "ecg-monitor/+/status"])
        config = write_config(
            tmp_path / "c.toml",
            tls_port,
            model,
            mqtt={"tls": True, "ca_file": str(data / "ca.crt")},
        )
        d = Daemon(config).start()
        daemons.append(d)
        wait_online(col, instance_of(config))
        pub = Publisher(broker.port)
        for seq in range(0, 40, 4):  # several messages: TLS-buffered reads must not stall
            pub.publish("ecg/tls/window", encode_binary(seq, 0.0, windows(4, np.ones(4, bool))))
        pub.close()
        col.wait_for(lambda: len(col.of("/alert")) >= 40, 20, "alerts over TLS")
        col.close()
    finally:
        broker.stop()
        shutil.rmtree(data, ignore_errors=True)


# ------------------------------------------------------------------ start-up, metrics, backpressure


def test_bad_config_and_bad_model_exit_3_with_one_line(tmp_path: Path, model: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[mqtt]\nhots = "x"\n')
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"nope")
    broken = write_config(tmp_path / "m.toml", free_port(), corrupt)
    for config, needle in ((bad, "unknown key(s) in [mqtt]: hots"), (broken, "corrupt.onnx")):
        proc = subprocess.run(
            [sys.executable, "-m", "monitor", "run", "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            check=False,
            timeout=60,
        )
        assert proc.returncode == 3
        lines = proc.stderr.decode().strip().splitlines()
        assert needle in lines[-1]
        assert lines[-1].startswith("ecg-monitor: ")


def test_metrics_endpoint_counts_what_happened(
    tmp_path: Path, mosquitto: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    port = free_port()
    config = write_config(tmp_path / "c.toml", mosquitto.port, model, metrics={"port": port})
    col = Collector(mosquitto.port, ["ecg/met/+", "ecg-monitor/+/status"])
    start(daemons, config, col)
    pub = Publisher(mosquitto.port)
    pub.publish("ecg/met/window", encode_binary(0, 0.0, windows(10, np.arange(10) < 3)))
    pub.publish("ecg/met/window", b"garbage")
    pub.close()
    col.wait_for(lambda: len(col.of("/alert")) >= 3 and col.of("/rejected"), 20, "outputs")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    col.wait_for(lambda: "ecg_monitor_alerts_total 3" in scrape(), 10, "alert count")
    text = scrape()
    assert "ecg_monitor_windows_received_total 10" in text
    assert "ecg_monitor_windows_scored_total 10" in text
    assert 'ecg_monitor_messages_rejected_total{code="bad_json"} 1' in text
    assert "ecg_monitor_alert_latency_seconds_count 3" in text
    assert "ecg_monitor_inference_seconds_count" in text
    assert 'model_version="v1"' in text
    col.close()


def test_backpressure_small_queue_scores_every_qos1_window(
    tmp_path: Path, mosquitto: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    """queue_windows far below the burst: the daemon stops reading instead of dropping."""
    config = write_config(
        tmp_path / "c.toml",
        mosquitto.port,
        model,
        batch={"max_batch": 16, "max_wait_ms": 1.0},
        limits={"queue_windows": 32},
        alerts={"publish_scores": True},
    )
    col = Collector(mosquitto.port, ["ecg/+/score", "ecg-monitor/+/status"])
    d = start(daemons, config, col)
    pub = Publisher(mosquitto.port)
    stream(pub, 2, 1500, frame=10)
    pub.close()
    want = {(f"dev{i}", s) for i in range(2) for s in range(1500)}
    col.wait_for(lambda: want <= set(scored_keys(col)), 60, "every window scored")
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0
    stopped = d.wait_event("stopped")
    assert stopped["windows_scored"] == 3000


def test_an_alarm_storm_is_logged_published_and_counted_once_naming_the_cause(
    tmp_path: Path, mosquitto: Mosquitto, daemons: list[Daemon]
) -> None:
    """A model alerting on every window of normal-looking data (here: a threshold far below
    every score) is the model/data mismatch the storm guard names; said once per scope."""
    model = build_model(
        tmp_path / "storm.onnx",
        threshold=0.01,
        extra_meta={"ecg.calibration": '{"method": "quantile", "fpr": 0.01, "threshold": 0.01}'},
    )
    port = free_port()
    config = write_config(
        tmp_path / "c.toml",
        mosquitto.port,
        model,
        metrics={"port": port},
        alerts={"storm_windows": 50, "storm_fleet_windows": 150},
    )
    col = Collector(mosquitto.port, ["ecg/+/alert", "ecg-monitor/+/status"])
    daemon = start(daemons, config, col)
    pub = Publisher(mosquitto.port)
    stream(pub, devices=1, per_device=300, frame=5)  # 300 windows of one device, all alerts
    pub.close()
    col.wait_for(lambda: len(col.of("/alert")) >= 300, 30, "every window alerted regardless")
    instance = instance_of(config)

    def storms() -> list[dict[str, object]]:
        with col._lock:
            return [
                d["alarm_storm"]
                for t, d in col.messages
                if t == f"ecg-monitor/{instance}/status" and "alarm_storm" in d
            ]

    col.wait_for(lambda: len(storms()) >= 2, 20, "storm status messages")
    time.sleep(0.5)  # nothing more comes for the rest of the run
    published = storms()
    assert [(s["scope"], s["device_id"]) for s in published] == [
        ("device", "dev0"),
        ("fleet", None),
    ]
    assert all(s["likely_cause"] == "model and data do not match" for s in published)
    assert all(s["fpr"] == 0.01 and s["alert_share"] == 1.0 for s in published)
    logged = [e for e in daemon.events() if e.get("event") == "alarm_storm"]
    assert [e["scope"] for e in logged] == ["device", "fleet"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'ecg_monitor_alarm_storms_total{scope="device"} 1' in text
    assert 'ecg_monitor_alarm_storms_total{scope="fleet"} 1' in text
    col.close()
