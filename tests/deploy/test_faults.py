"""Faults with the shipped broker config and the real daemon: a broker restart in the middle of
a QoS 1 stream, and a daemon killed again and again; no window is lost."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest

from monitor.wire import encode_binary
from tests.brokers import Mosquitto
from tests.deploy.clients import BrokerClient
from tests.deploy.conftest import USERS, SecureBroker
from tests.monitor.daemon import Collector, Daemon, Publisher, window_keys, write_config
from tests.onnx_models import build_model, windows

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

FRAME = 5  # windows per binary frame


def scored_from(messages: list[tuple[str, bytes]]) -> set[tuple[str, int]]:
    return {
        key
        for topic, payload in messages
        if topic.endswith("/score")
        for key in window_keys(json.loads(payload))
    }


def test_broker_restart_mid_stream_loses_no_window(
    tmp_path: Path,
    fresh_secure_broker: SecureBroker,
    daemons: list[Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sb = fresh_secure_broker
    monkeypatch.setenv("ECG_MONITOR_MQTT_PASSWORD", USERS["ecg-monitor"])
    config = write_config(
        tmp_path / "monitor.toml",
        sb.tls_port,
        build_model(tmp_path / "model.onnx"),
        mqtt={
            "host": "localhost",
            "tls": True,
            "ca_file": str(sb.ca),
            "username": "ecg-monitor",
            "password_env": "ECG_MONITOR_MQTT_PASSWORD",
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
        },
        alerts={"publish_scores": True},
    )
    # the observer keeps a persistent session too, so scores published while it reconnects wait
    ops = BrokerClient(
        sb.tls_port,
        "ops",
        USERS["ops"],
        sb.ca,
        client_id="ops-faults",
        session_expiry_s=600,
        clean_start=False,
    )
    assert ops.connect() == "Success"
    ops.subscribe("ecg/+/score")
    ops.subscribe("ecg-monitor/+/status")
    daemons.append(daemon := Daemon(config).start())
    assert ops.wait(lambda: b'"online"' in b"".join(ops.received()), 60), daemon.output()[-3000:]

    devices = [BrokerClient(sb.tls_port, d, USERS[d], sb.ca) for d in ("d1", "d2")]
    for dev in devices:
        assert dev.connect() == "Success"
    x = windows(FRAME, seed=2)
    mids: dict[str, list[int]] = {"d1": [], "d2": []}
    enough = threading.Event()
    sent = [0]

    def stream() -> None:  # until told to stop, and at least 1,000 windows per device
        seq = 0
        while not enough.is_set() or seq < 1000:
            for dev in devices:
                payload = encode_binary(seq, float(seq), x)
                mids[str(dev.username)].append(
                    dev.publish_nowait(f"ecg/{dev.username}/window", payload)
                )
            seq += FRAME
            sent[0] = seq
            time.sleep(0.004)

    publisher = threading.Thread(target=stream)
    publisher.start()
    time.sleep(0.6)  # part of the stream is through, the rest is still coming
    sb.broker.restart()
    time.sleep(1.0)  # and the stream goes on after the restart
    enough.set()
    publisher.join()
    per_device = sent[0]
    for dev in devices:
        assert dev.wait_acked(mids[str(dev.username)], 60), "device publishes never acknowledged"
    want = {(d, s) for d in ("d1", "d2") for s in range(per_device)}
    ops.wait(lambda: scored_from(ops.messages) >= want, 90)
    missing = want - scored_from(ops.messages)
    assert not missing, f"{len(missing)} windows never scored, e.g. {sorted(missing)[:5]}"
    assert daemon.proc is not None and daemon.proc.poll() is None  # it rode out the restart
    events = [e.get("event") for e in daemon.events()]
    assert "mqtt_disconnected" in events  # the restart really cut the daemon off ...
    assert events.count("mqtt_subscribed") >= 2  # ... and it came back
    assert scored_from(ops.messages)  # sanity: the observer saw scores at all
    for c in (*devices, ops):
        c.close()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def test_repeated_sigkill_loses_no_window(
    tmp_path: Path, fresh_mosquitto: Mosquitto, daemons: list[Daemon]
) -> None:
    """Three SIGKILLs during one QoS 1 stream, each followed by a restart of the same session."""
    config = write_config(
        tmp_path / "monitor.toml",
        fresh_mosquitto.port,
        build_model(tmp_path / "model.onnx"),
        alerts={"publish_scores": True},
    )
    col = Collector(fresh_mosquitto.port, ["ecg/+/score", "ecg-monitor/+/status"])

    def start() -> Daemon:
        d = Daemon(config).start()
        daemons.append(d)
        d.wait_event("ready", 60)
        return d

    daemon = start()
    devices = 2
    x = windows(FRAME, seed=3)
    enough = threading.Event()
    sent = [0]

    def stream() -> None:  # until told to stop, and at least 2,000 windows per device
        pub = Publisher(fresh_mosquitto.port)
        seq = 0
        while not enough.is_set() or seq < 2000:
            for d in range(devices):
                pub.publish(f"ecg/k{d}/window", encode_binary(seq, float(seq), x))
            seq += FRAME
            sent[0] = seq
            time.sleep(0.003)
        pub.close()

    publisher = threading.Thread(target=stream)
    publisher.start()
    for _ in range(3):
        time.sleep(0.5)  # the restarted daemon is scoring again: kill it mid-stream
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        daemon = start()
    time.sleep(0.5)
    enough.set()
    publisher.join()
    per_device = sent[0]

    def keys() -> set[tuple[str, int]]:
        return {(r["device_id"], r["seq"] + i) for r in col.of("/score") for i in range(r["count"])}

    want = {(f"k{d}", s) for d in range(devices) for s in range(per_device)}
    col.wait_for(lambda: keys() >= want, 90, "every window scored after the kills")
    assert not want - keys()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    col.close()
