"""The shipped mosquitto config (deploy/mosquitto) enforces TLS, passwords and the per-device ACL.

Real mosquitto, real paho clients, certificates from the shipped make-dev-certs.sh.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from tests.deploy.clients import BrokerClient
from tests.deploy.conftest import USERS, SecureBroker


@pytest.fixture
def connect(secure_broker: SecureBroker) -> Iterator[object]:
    """connect(user, **kw) -> a connected BrokerClient over TLS; all closed after the test."""
    opened: list[BrokerClient] = []

    def _connect(user: str, protocol: int = mqtt.MQTTv5, **kw: object) -> BrokerClient:
        c = BrokerClient(
            secure_broker.tls_port,
            user,
            USERS[user],
            secure_broker.ca,
            protocol,
            **kw,  # type: ignore[arg-type]
        )
        opened.append(c)
        assert c.connect() == "Success"
        return c

    yield _connect
    for c in opened:
        c.close()


def settle() -> None:
    """Give the broker time to deliver anything it wrongly would (after a positive marker)."""
    time.sleep(0.3)


@pytest.mark.parametrize("user", sorted(USERS))
def test_every_role_connects_over_tls_with_its_password(
    secure_broker: SecureBroker, user: str
) -> None:
    c = BrokerClient(secure_broker.tls_port, user, USERS[user], secure_broker.ca)
    try:
        assert c.connect() == "Success"
    finally:
        c.close()


@pytest.mark.parametrize("listener", ["tls", "loopback"])
@pytest.mark.parametrize(
    ("user", "password"),
    [(None, None), ("d1", "wrong"), ("nobody", "pw-d1")],
    ids=["anonymous", "bad-password", "unknown-user"],
)
def test_refused_without_valid_credentials(
    secure_broker: SecureBroker, listener: str, user: str | None, password: str | None
) -> None:
    tls = listener == "tls"
    port = secure_broker.tls_port if tls else secure_broker.plain_port
    c = BrokerClient(port, user, password, secure_broker.ca if tls else None)
    try:
        result = c.connect()
        assert result == "Not authorized" or result.startswith("closed"), result
        assert "Success" not in c.connects
    finally:
        c.close()


def test_tls_listener_needs_a_trusted_certificate_chain(secure_broker: SecureBroker) -> None:
    """The server certificate verifies against the dev CA only, not the system CAs."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.tls_set(cert_reqs=ssl.CERT_REQUIRED)  # system CAs, not ours
    c.username_pw_set("d1", USERS["d1"])
    with pytest.raises(ssl.SSLCertVerificationError):
        c.connect("localhost", secure_broker.tls_port)


def test_plain_mqtt_on_the_tls_port_gets_nowhere(secure_broker: SecureBroker) -> None:
    c = BrokerClient(secure_broker.tls_port, "d1", USERS["d1"], None)
    try:
        assert c.connect(timeout=5).startswith("closed")
    except AssertionError as e:  # no CONNACK at all is just as good
        assert "no CONNACK" in str(e)
    finally:
        c.close()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
@pytest.mark.parametrize("subscription", ["ecg/+/window", "$share/monitors/ecg/+/window"])
def test_device_cannot_inject_into_another_devices_window(
    connect: object, protocol: int, subscription: str
) -> None:
    monitor = connect("ecg-monitor")  # type: ignore[operator]
    assert monitor.subscribe(subscription) == ["Granted QoS 1"]
    attacker = connect("d1", protocol)  # type: ignore[operator]
    result = attacker.publish("ecg/d2/window", b"injected", qos=1)
    if protocol == mqtt.MQTTv5:
        assert result in ("Not authorized", "closed: Unspecified error")
    honest = connect("d1")  # type: ignore[operator]
    assert honest.publish("ecg/d1/window", b"marker") == "Success"
    assert monitor.wait(lambda: monitor.received("ecg/d1/window") == [b"marker"])
    settle()
    assert monitor.received("ecg/d2/window") == []
    assert b"injected" not in monitor.received()


def test_device_reads_only_its_own_alerts(connect: object) -> None:
    d1 = connect("d1")  # type: ignore[operator]
    for topic in ("ecg/+/alert", "ecg/d2/alert", "ecg/#", "#"):
        d1.subscribe(topic)
    monitor = connect("ecg-monitor")  # type: ignore[operator]
    assert monitor.publish("ecg/d2/alert", b"alert-for-d2") == "Success"
    assert monitor.publish("ecg/d1/alert", b"alert-for-d1") == "Success"
    assert d1.wait(lambda: b"alert-for-d1" in d1.received())
    settle()
    assert b"alert-for-d2" not in d1.received()
    assert {t for t, _ in d1.messages} == {"ecg/d1/alert"}


def test_device_cannot_read_other_devices_windows(connect: object) -> None:
    d2 = connect("d2")  # type: ignore[operator]
    d2.subscribe("ecg/+/window")
    d1 = connect("d1")  # type: ignore[operator]
    assert d1.publish("ecg/d1/window", b"private") == "Success"
    monitor = connect("ecg-monitor")  # type: ignore[operator]
    monitor.subscribe("ecg/+/window")
    assert d1.publish("ecg/d1/window", b"private-2") == "Success"
    assert monitor.wait(lambda: b"private-2" in monitor.received())
    settle()
    assert d2.received() == []


@pytest.mark.parametrize(
    "topic",
    [
        "ecg/d1/window",
        "ecg/alerts/window",
        "ecg/d1/alert",
        "ecg/d1/rejected",
        "ecg-monitor/m1/status",
    ],
)
@pytest.mark.parametrize("user", ["alerts", "ops"])
def test_consumer_cannot_publish(connect: object, topic: str, user: str) -> None:
    watcher = connect("ecg-monitor")  # type: ignore[operator]
    watcher.subscribe("ecg/+/window")
    watcher.subscribe("ecg/+/alert")
    watcher.subscribe("ecg-monitor/+/status")
    consumer = connect(user)  # type: ignore[operator]
    assert consumer.publish(topic.replace("alerts", user), b"forged") in (
        "Not authorized",
        "closed: Unspecified error",
    )
    d1 = connect("d1")  # type: ignore[operator]
    assert d1.publish("ecg/d1/window", b"marker") == "Success"
    assert watcher.wait(lambda: b"marker" in watcher.received())
    settle()
    assert b"forged" not in watcher.received()


def test_consumer_reads_alerts_of_every_device(connect: object) -> None:
    consumer = connect("alerts")  # type: ignore[operator]
    consumer.subscribe("ecg/+/alert")
    monitor = connect("ecg-monitor")  # type: ignore[operator]
    for device in ("d1", "d2", "d3"):
        assert monitor.publish(f"ecg/{device}/alert", device.encode()) == "Success"
    assert consumer.wait(lambda: len(consumer.received()) == 3)


@pytest.mark.parametrize(
    "topic", ["ecg/d1/alert", "ecg/d1/rejected", "ecg/d1/score", "ecg-monitor/m1/status"]
)
def test_monitor_may_publish_its_outputs(connect: object, topic: str) -> None:
    monitor = connect("ecg-monitor")  # type: ignore[operator]
    # 0x10 is a success code too: authorised, and nobody happens to subscribe
    assert monitor.publish(topic, b"{}") in ("Success", "No matching subscribers")


@pytest.mark.parametrize("topic", ["ecg/d1/window", "ecg/ecg-monitor/window"])
def test_monitor_cannot_publish_windows(connect: object, topic: str) -> None:
    monitor = connect("ecg-monitor")  # type: ignore[operator]
    assert monitor.publish(topic, b"x") in ("Not authorized", "closed: Unspecified error")


def test_ops_reads_rejects_and_status_but_not_windows(connect: object) -> None:
    ops = connect("ops")  # type: ignore[operator]
    for topic in ("ecg/+/rejected", "ecg-monitor/+/status", "ecg/+/window"):
        ops.subscribe(topic)
    monitor = connect("ecg-monitor")  # type: ignore[operator]
    assert monitor.publish("ecg/d1/rejected", b"rej") == "Success"
    assert connect("d1").publish("ecg/d1/window", b"win") == "Success"  # type: ignore[operator]
    assert monitor.publish("ecg-monitor/m1/status", b"online") == "Success"
    assert ops.wait(lambda: b"online" in ops.received())
    settle()
    assert ops.received("ecg/d1/rejected") == [b"rej"]
    assert ops.received("ecg/d1/window") == []
