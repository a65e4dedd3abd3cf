"""The paho <-> asyncio bridge's own packet paths against a real mosquitto: framed QoS 1
publishes, PUBACK runs, buffered reads of PUBLISH with and without MQTT 5 properties, coalesced
acks, and backpressure with packets already buffered."""

from __future__ import annotations

import asyncio
import math
import threading
import uuid

import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from monitor import mqtt as bridge_mod
from monitor.alerts import Alert, AlertEncoder
from monitor.config import MqttConfig
from monitor.mqtt import Message, MqttBridge, _frame_end, _parse_publish
from tests.brokers import Mosquitto

pytestmark = pytest.mark.timeout(120)

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
device = st.from_regex(r"\A[A-Za-z0-9_.-]{1,64}\Z")


@given(
    dev=device,
    seq=st.integers(0, 2**64 - 1),
    ts=finite,
    score=st.floats(allow_nan=False, allow_infinity=False, width=32),
    threshold=finite,
    model=st.text(max_size=20),
    version=st.text(max_size=20),
    peak=st.integers(0, 10_000),
    received=finite,
    published=finite,
    p_value=st.none() | st.floats(0.0, 1.0),
)
def test_alert_encoder_is_byte_identical_to_the_dataclass(  # noqa: PLR0917
    dev: str,
    seq: int,
    ts: float,
    score: float,
    threshold: float,
    model: str,
    version: str,
    peak: int,
    received: float,
    published: float,
    p_value: float | None,
) -> None:
    enc = AlertEncoder(threshold, model, version)
    got = enc.encode(
        [dev, dev],
        seqs=[seq, seq],
        ts=[ts, ts],
        scores=[score, score],
        peaks=[peak, peak],
        received_at=[received, received],
        published_at=published,
        p_values=[p_value, p_value],
    )
    want = Alert(
        dev, seq, ts, score, threshold, model, version, peak, received, published, p_value=p_value
    )
    assert got == [want.to_json()] * 2


def test_alert_encoder_refuses_non_finite_like_the_dataclass() -> None:
    enc = AlertEncoder(26.0, "m", "v")
    with pytest.raises(ValueError):
        enc.encode(
            ["d"],
            seqs=[1],
            ts=[0.0],
            scores=[math.inf],
            peaks=[0],
            received_at=[0.0],
            published_at=0.0,
        )


def test_frame_end_and_publish_parsing() -> None:
    body = bytearray(b"\x00\x03a/b\x12\x34\x07\x26\x00\x01k\x00\x01vPAYLOAD")  # v5, user prop
    pkt = bytearray([0x32, len(body)]) + body
    assert _frame_end(pkt, 0) == len(pkt)
    assert _frame_end(pkt[:-1], 0) == 0  # incomplete
    assert _frame_end(bytearray(b"\x30\xff\xff\xff\xff\x01"), 0) == -1  # over 4 length bytes
    assert _parse_publish(0x32, body, True) == (b"a/b", b"PAYLOAD", 1, 0x1234)
    assert _parse_publish(0x30, bytearray(b"\x00\x01tPAY"), False) == (b"t", b"PAY", 0, 0)
    assert _parse_publish(0x32, bytearray(b"\x00\x00\x00\x01\x00X"), True) is None  # alias
    with pytest.raises(IndexError):
        _parse_publish(0x32, bytearray(b"\x00\x03a/b\x00\x01\x09\x00"), True)


def _cfg(port: int, **kw: object) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=port, client_id=f"t-{uuid.uuid4().hex[:8]}", **kw)  # type: ignore[arg-type]


class Sink:
    """A plain paho subscriber that keeps (topic, payload) in arrival order."""

    def __init__(self, port: int, topic: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(10)

    def _on(self, c: object, u: object, m: paho.MQTTMessage) -> None:
        with self.lock:
            self.got.append((m.topic, bytes(m.payload)))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.skipif(not bridge_mod._FAST, reason="paho without the internals the fast path uses")
def test_framed_publishes_arrive_in_order_and_each_puback_completes_once(
    mosquitto: Mosquitto,
) -> None:
    sink = Sink(mosquitto.port, "fast/#")
    n = 2500
    payloads = [bytes([i % 251]) * (i % 700 + 1) for i in range(n)]  # 1-700 bytes

    async def go() -> tuple[list[int], int]:
        b = MqttBridge(_cfg(mosquitto.port, max_inflight_out=50), subscription=None)
        await b.start(10)
        done: list[int] = []
        items = [
            (f"fast/{i % 7}".encode(), p, (lambda i=i: done.append(i)))
            for i, p in enumerate(payloads)
        ]
        for k in range(0, n, 300):
            b.publish_many(items[k : k + 300])
        b.publish("fast/status", b"retained-too", retain=True, on_done=lambda: done.append(-1))
        ok = await b.wait_published(60)
        assert ok
        left = b.unacked_publishes
        await b.close()
        return done, left

    done, left = asyncio.run(go())
    assert left == 0
    assert sorted(done) == [-1, *range(n)]
    deadline = threading.Event()
    for _ in range(500):
        with sink.lock:
            if len(sink.got) >= n + 1:
                break
        deadline.wait(0.02)
    sink.close()
    assert sink.got[:n] == [(f"fast/{i % 7}", p) for i, p in enumerate(payloads)]
    assert sink.got[n] == ("fast/status", b"retained-too")


def test_bridge_reads_publishes_with_properties_big_payloads_and_acks_them(
    mosquitto: Mosquitto,
) -> None:
    """Bodies with MQTT 5 properties, payloads far over one 256 KiB read, QoS 0 and 1; each QoS
    1 message acked (a second session sees none of them again)."""
    topic = f"in/{uuid.uuid4().hex[:6]}"
    sizes = [0, 1, 127, 128, 16383, 16384, 300_000, 700_000, 5]
    cfg = _cfg(mosquitto.port, receive_maximum=4)

    def publish_all() -> None:
        c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        c.connect("127.0.0.1", mosquitto.port)
        c.loop_start()
        for i, size in enumerate(sizes):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = ("k", "v" * i)
            props.MessageExpiryInterval = 600
            c.publish(topic, bytes([i]) * size, qos=1 if i % 3 else 0, properties=props)
        c.publish(topic, b"end", qos=1).wait_for_publish(30)
        c.disconnect()
        c.loop_stop()

    async def session(expect: int) -> list[Message]:
        got: list[Message] = []
        finished = asyncio.Event()
        b: MqttBridge

        def on_message(m: Message) -> None:
            got.append(m)
            b.ack(m)
            if m.payload == b"end" or len(got) >= expect:
                finished.set()

        b = MqttBridge(cfg, subscription=f"{topic}", on_message=on_message)
        await b.start(10)
        if expect:
            await asyncio.to_thread(publish_all)
            await asyncio.wait_for(finished.wait(), 60)
        else:
            await asyncio.sleep(1.0)  # anything unacked would be redelivered now
        await asyncio.sleep(0.1)  # the coalesced acks go out
        await b.close()
        return got

    got = asyncio.run(session(len(sizes) + 1))
    assert [m.payload for m in got] == [bytes([i]) * s for i, s in enumerate(sizes)] + [b"end"]
    assert all(m.topic == topic for m in got)
    assert [m.qos for m in got[:-1]] == [1 if i % 3 else 0 for i in range(len(sizes))]
    assert asyncio.run(session(0)) == []


def test_pause_with_packets_already_buffered_does_not_stall(mosquitto: Mosquitto) -> None:
    """Pausing after every message and resuming a moment later still drains everything: packets
    read into the bridge's buffer before a pause are processed on resume (no readable event
    comes for them, and with Receive Maximum reached the broker sends nothing new)."""
    topic = f"bp/{uuid.uuid4().hex[:6]}"
    n = 300
    cfg = _cfg(mosquitto.port, receive_maximum=20, keepalive_s=60)
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)

    async def go() -> int:
        got: list[Message] = []
        finished = asyncio.Event()
        loop = asyncio.get_running_loop()
        b: MqttBridge

        def on_message(m: Message) -> None:
            got.append(m)
            b.pause_reading()

            def later() -> None:
                b.ack(m)
                b.resume_reading()

            loop.call_later(0.001, later)
            if len(got) == n:
                finished.set()

        b = MqttBridge(cfg, subscription=topic, on_message=on_message)
        await b.start(10)
        c.connect("127.0.0.1", mosquitto.port)
        c.loop_start()
        infos = [c.publish(topic, b"x" * 100, qos=1) for _ in range(n)]
        await asyncio.to_thread(lambda: [i.wait_for_publish(30) for i in infos])
        try:
            await asyncio.wait_for(finished.wait(), 20)  # a stall waits for the 60 s keepalive
        finally:
            await b.close()
            c.disconnect()
            c.loop_stop()
        return len(got)

    assert asyncio.run(go()) == n
