"""The daemon against the shipped broker config: TLS, its own credentials, and the device ACL
keeping injected windows away from the model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from monitor.wire import encode_binary, encode_json
from tests.deploy.clients import BrokerClient
from tests.deploy.conftest import USERS, SecureBroker
from tests.monitor.daemon import Daemon, window_keys, write_config
from tests.onnx_models import build_model, windows

pytestmark = pytest.mark.timeout(180)
THRESHOLD = 20.0


@pytest.fixture
def clients() -> Iterator[list[BrokerClient]]:
    opened: list[BrokerClient] = []
    yield opened
    for c in opened:
        c.close()


def client(sb: SecureBroker, opened: list[BrokerClient], user: str) -> BrokerClient:
    c = BrokerClient(sb.tls_port, user, USERS[user], sb.ca)
    opened.append(c)
    assert c.connect() == "Success"
    return c


def test_daemon_over_tls_scores_own_windows_and_never_injected_ones(
    tmp_path: Path,
    secure_broker: SecureBroker,
    clients: list[BrokerClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = build_model(tmp_path / "model.onnx", threshold=THRESHOLD)
    monkeypatch.setenv("ECG_MONITOR_MQTT_PASSWORD", USERS["ecg-monitor"])
    config = write_config(
        tmp_path / "monitor.toml",
        secure_broker.tls_port,
        model,
        mqtt={
            "host": "localhost",
            "tls": True,
            "ca_file": str(secure_broker.ca),
            "username": "ecg-monitor",
            "password_env": "ECG_MONITOR_MQTT_PASSWORD",
        },
        alerts={"publish_scores": True},
    )
    ops = client(secure_broker, clients, "ops")
    for topic in ("ecg/+/alert", "ecg/+/score", "ecg/+/rejected", "ecg-monitor/+/status"):
        assert ops.subscribe(topic) == ["Granted QoS 1"]
    daemon = Daemon(config).start()
    try:
        assert ops.wait(
            lambda: any(json.loads(p).get("state") == "online" for p in ops.received()), 60
        ), daemon.output()[-3000:]

        flags = np.zeros(20, bool)
        flags[[3, 7, 15]] = True
        x = windows(20, flags, seed=11)
        plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        (scores,) = plain.run(["score"], {"windows": x})
        expected_alerts = {("d1", s) for s in range(20) if scores[s] > THRESHOLD}
        assert expected_alerts == {("d1", 3), ("d1", 7), ("d1", 15)}

        # d1 tries to inject clearly anomalous windows as d2 first: refused by the broker ACL
        attacker = client(secure_broker, clients, "d1")
        bad = windows(5, np.ones(5, bool), seed=12)
        result = attacker.publish("ecg/d2/window", encode_binary(1000, 0.0, bad))
        assert result in ("Not authorized", "closed: Unspecified error")

        d1 = client(secure_broker, clients, "d1")
        for s in range(10):
            assert d1.publish("ecg/d1/window", encode_json(s, float(s), x[s])) == "Success"
        assert d1.publish("ecg/d1/window", encode_binary(10, 10.0, x[10:20])) == "Success"
        d2 = client(secure_broker, clients, "d2")
        assert d2.publish("ecg/d2/window", encode_json(0, 0.0, x[0])) == "Success"

        def scored() -> set[tuple[str, int]]:
            return {
                key
                for topic, payload in ops.messages
                if topic.endswith("/score")
                for key in window_keys(json.loads(payload))
            }

        want = {("d1", s) for s in range(20)} | {("d2", 0)}
        assert ops.wait(lambda: scored() >= want, 30), (scored(), daemon.output()[-3000:])
        assert ops.wait(lambda: len([t for t, _ in ops.messages if t.endswith("/alert")]) >= 3)
        alerts = [json.loads(p) for t, p in ops.messages if t.endswith("/alert")]
        assert {(a["device_id"], a["seq"]) for a in alerts} == expected_alerts
        assert scored() == want  # the injected d2 seqs 1000..1004 never reached the model
        assert not [t for t, _ in ops.messages if t.endswith("/rejected")]
    finally:
        daemon.signal(15)
        code = daemon.wait(30)
        daemon.stop()
    assert code == 0, daemon.output()[-3000:]


def test_daemon_with_a_wrong_password_is_refused_and_never_ready(
    tmp_path: Path, secure_broker: SecureBroker
) -> None:
    model = build_model(tmp_path / "model.onnx", threshold=THRESHOLD)
    (tmp_path / "pw").write_text("not-the-password\n")
    config = write_config(
        tmp_path / "monitor.toml",
        secure_broker.tls_port,
        model,
        mqtt={
            "host": "localhost",
            "tls": True,
            "ca_file": str(secure_broker.ca),
            "username": "ecg-monitor",
            "password_file": str(tmp_path / "pw"),
        },
    )
    daemon = Daemon(config).start()
    try:
        with pytest.raises(AssertionError):
            daemon.wait_event("ready", timeout=5)
        log = daemon.output()
        assert "not authori" in log.lower(), log[-3000:]
        assert "not-the-password" not in log  # the secret never reaches the logs
    finally:
        daemon.stop()
