"""The shipped broker config keeps every QoS 1 window for an offline monitor, across restarts.

mosquitto's default max_queued_messages (1000) would drop windows 1001+; the shipped config
bounds the queue by bytes instead, and persistence keeps it through a broker restart.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt

from tests.deploy.clients import BrokerClient
from tests.deploy.conftest import USERS, SecureBroker

N = 3000


def monitor_session(sb: SecureBroker, client_id: str) -> BrokerClient:
    return BrokerClient(
        sb.tls_port,
        "ecg-monitor",
        USERS["ecg-monitor"],
        sb.ca,
        mqtt.MQTTv5,
        client_id=client_id,
        session_expiry_s=600,
        clean_start=False,
    )


def queue_windows_while_offline(sb: SecureBroker, client_id: str) -> list[bytes]:
    first = monitor_session(sb, client_id)
    assert first.connect() == "Success"
    assert first.subscribe("ecg/+/window") == ["Granted QoS 1"]
    first.close()
    device = BrokerClient(sb.tls_port, "d1", USERS["d1"], sb.ca)
    assert device.connect() == "Success"
    payloads = [f"window-{i}".encode() for i in range(N)]
    device.publish_many("ecg/d1/window", payloads)
    device.close()
    return payloads


def drain(sb: SecureBroker, client_id: str) -> list[bytes]:
    again = monitor_session(sb, client_id)
    try:
        assert again.connect() == "Success"
        again.wait(lambda: len(again.received()) >= N, timeout=60)
        return again.received()
    finally:
        again.close()


def test_offline_monitor_gets_more_than_the_default_queue(secure_broker: SecureBroker) -> None:
    payloads = queue_windows_while_offline(secure_broker, "monitor-queue-test")
    got = drain(secure_broker, "monitor-queue-test")
    assert sorted(got) == sorted(payloads)


def test_queued_windows_survive_a_broker_restart(fresh_secure_broker: SecureBroker) -> None:
    payloads = queue_windows_while_offline(fresh_secure_broker, "monitor-restart-test")
    fresh_secure_broker.broker.restart()
    got = drain(fresh_secure_broker, "monitor-restart-test")
    assert sorted(got) == sorted(payloads)
