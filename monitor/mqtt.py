"""The paho-mqtt <-> asyncio bridge: paho's socket on the event loop, callbacks that only
convert and hand over, publish completion by PUBACK, manual acknowledgement, reconnects.

Pattern of paho's examples/loop_asyncio.py and aiomqtt v2: `add_reader`/`add_writer` on the
socket, a `loop_misc` task for keepalive, everything on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from monitor.config import MqttConfig
from monitor.errors import MonitorError

log = structlog.get_logger("monitor.mqtt")

SHORT_SESSION_S = 5.0
FLAPPING_AFTER = 3  # short sessions in a row that name the likely cause


class MqttError(MonitorError):
    """The broker refused us, or a publish could not be queued."""


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4


def publish_packet_bytes(topic: str, payload_bytes: int, qos: int, v5: bool) -> int:
    """Size of the PUBLISH packet paho sends: fixed header, topic, packet id (QoS > 0), the
    MQTT 5 property length (we send no properties) and the payload."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + (1 if v5 else 0) + payload_bytes
    return 1 + _varint_len(remaining) + remaining


OnDone = Callable[[], None] | None
_PUBLISH_QOS1 = 0x32  # PUBLISH, QoS 1, no DUP; | 1 for retain
_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
# What the fast paths below use of paho's internals (paho-mqtt 2.1-2.2); without any of it the
# bridge falls back to paho's public publish and its own PUBACK decoding.
_FAST = all(
    hasattr(paho.Client, name)
    for name in (
        "_handle_pubackcomp",
        "_packet_queue",
        "_mid_generate",
        "_sock_recv",
        "_packet_read",
        "_packet_handle",
    )
) and set(getattr(paho.MQTTMessage, "__slots__", ())) >= {
    "_topic",
    "dup",
    "info",
    "mid",
    "payload",
    "properties",
    "qos",
    "retain",
    "state",
    "timestamp",
}


class _Client(paho.Client):
    """paho's client with the bridge's hot paths done without per-packet objects.

    * Reading: paho reads each packet with three `recv` calls (command byte, length, body);
      `_packet_read` here receives up to 256 KiB at a time and cuts packets from that buffer.
      PUBLISH (QoS 0/1) and PUBACK are decoded right there; every other packet goes through
      paho's own `_packet_handle` as before.
    * Incoming PUBLISH: topic, mid and payload are sliced out and handed to `publish_hook`
      (no `MQTTMessage`, no `Properties`); `ack_many` sends many PUBACKs in one write.
    * PUBACK: paho decodes each into a `ReasonCode` and a `Properties` object and walks three
      callback layers (~40 % of the daemon's CPU in an alert storm); here the mid and reason
      byte are read straight from the packet and handed to `puback_hook`.
    * QoS 1 PUBLISH: `publish_many` frames many messages into one buffer (one socket write)
      and registers each in paho's `_out_messages` exactly as `publish` would, so paho still
      resends them after a reconnect and the PUBACK still finds them.
    """

    puback_hook: Callable[[int, int], None] | None = None
    publish_hook: Callable[[bytes, bytes, int, int], None] | None = None
    puback_many_hook: Callable[[list[int]], None] | None = None
    _rbuf: bytearray | None = None
    _rpos = 0
    _rsock: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._topic_heads: dict[bytes, bytes] = {}  # topic -> its length-prefixed form

    def buffered_packet(self) -> bool:
        """True when a whole packet is already buffered (the socket may not turn readable)."""
        buf = self._rbuf
        return buf is not None and self._rsock is self._sock and _frame_end(buf, self._rpos) > 0

    def _packet_read(self) -> MQTTErrorCode:
        if self._sock is not self._rsock or self._rbuf is None:  # new connection: new stream
            self._rsock, self._rbuf, self._rpos = self._sock, bytearray(), 0
        buf = self._rbuf
        while True:
            end = _frame_end(buf, self._rpos)
            if end > 0:
                break
            if end < 0:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            try:
                data = self._sock_recv(262144)
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if not data:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if self._rpos:
                del buf[: self._rpos]
                self._rpos = 0
            buf += data
            self._last_bytes_received = paho.time_func()
        pos = self._rpos
        command = buf[pos]
        i = pos + 1
        while buf[i] & 0x80:
            i += 1
        body = buf[i + 1 : end]
        self._rpos = end
        if end == len(buf):
            buf.clear()
            self._rpos = 0
        kind = command & 0xF0
        if kind == 0x40 and self.puback_hook is not None and len(body) >= 2:
            if (
                self.puback_many_hook is not None
                and len(body) <= 3
                and (len(body) < 3 or body[2] < 0x80)
            ):
                return self._pubacks_run(body)
            return self._fast_puback(body)
        if kind == 0x30 and self.publish_hook is not None and not command & 0x04:
            try:
                parsed = _parse_publish(command, body, self._protocol == paho.MQTTv5)
            except IndexError:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            if parsed is not None:
                self.publish_hook(*parsed)
                return _SUCCESS
        self._in_packet = {
            "command": command,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": len(body),
            "packet": body,
            "to_process": 0,
            "pos": 0,
        }
        try:
            rc: MQTTErrorCode = self._packet_handle()
        except MalformedPacket:
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(b""),
            "to_process": 0,
            "pos": 0,
        }
        return rc

    def _pubacks_run(self, first: bytearray) -> MQTTErrorCode:
        """A successful PUBACK and every successful PUBACK right behind it in the buffer, in
        one pass (an alert storm reads hundreds of them at a time)."""
        mids = [(first[0] << 8) | first[1]]
        buf, pos = self._rbuf, self._rpos
        assert buf is not None
        end = len(buf)
        while pos + 4 <= end and buf[pos] == 0x40:
            n = buf[pos + 1]
            if n == 2 or (n == 3 and pos + 5 <= end and buf[pos + 4] < 0x80):
                mids.append((buf[pos + 2] << 8) | buf[pos + 3])
            else:
                break
            pos += 2 + n
        if pos == end:
            buf.clear()
            pos = 0
        self._rpos = pos
        done = []
        shared = _SHARED_INFO
        with self._out_message_mutex:
            pop = self._out_messages.pop
            for mid in mids:
                msg = pop(mid, None)
                if msg is not None:
                    done.append(mid)
                    if msg.info is not shared:
                        msg.info._set_as_published()
            self._inflight_messages -= len(done)
        assert self.puback_many_hook is not None
        self.puback_many_hook(done)
        return _SUCCESS

    def _fast_puback(self, body: bytearray) -> MQTTErrorCode:
        assert self.puback_hook is not None
        return self._puback_done(body, self.puback_hook)

    def _puback_done(
        self, body: bytes | bytearray, hook: Callable[[int, int], None]
    ) -> MQTTErrorCode:
        """One PUBACK (mid, optional reason code): its message leaves paho's in-flight store,
        its info is marked published, and the hook learns of it."""
        mid = (body[0] << 8) | body[1]
        reason = body[2] if len(body) > 2 else 0
        with self._out_message_mutex:
            msg = self._out_messages.pop(mid, None)
            if msg is None:
                return _SUCCESS
            self._inflight_messages -= 1
        msg.info._set_as_published()
        hook(mid, reason)
        return _SUCCESS

    def ack_many(self, mids: Sequence[int]) -> None:
        """PUBACK (success) for each QoS 1 mid, as one write."""
        if not mids or self._sock is None:
            return
        buf = bytearray()
        for mid in mids:
            buf += b"\x40\x02"
            buf += mid.to_bytes(2, "big")
        self._packet_queue(paho.PUBACK, buf, 0, 0, None)

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        hook = self.puback_hook
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or hook is None or len(packet) < 2:
            return super()._handle_pubackcomp(cmd)
        return self._puback_done(packet, hook)

    def publish_many(self, items: Sequence[tuple[bytes, bytes, bool]]) -> list[int] | None:
        """QoS 1 publish of (topic, payload, retain) items as one write; their mids, or None
        when there is no socket (the caller then uses `publish`, which queues for reconnect)."""
        if self._sock is None:
            return None
        props = b"\x00" if self._protocol == paho.MQTTv5 else b""  # v5: no properties
        parts: list[bytes] = []
        mids: list[int] = []
        now = paho.time_func()
        out = self._out_messages
        info = _SHARED_INFO
        new = paho.MQTTMessage.__new__
        heads = self._topic_heads
        with self._mid_generate_mutex, self._out_message_mutex:
            last = self._last_mid
            for topic, payload, retain in items:
                last = last + 1 if last < 65535 else 1
                while last in out:  # a stale mid from before a reconnect still unacknowledged
                    last = last + 1 if last < 65535 else 1
                m = new(paho.MQTTMessage)
                m.timestamp, m.state, m.dup, m.mid, m._topic = now, _WAIT_PUBACK, False, last, topic
                m.payload, m.qos, m.retain, m.info, m.properties = payload, 1, retain, info, None
                out[last] = m
                head = heads.get(topic)
                if head is None:
                    head = heads[topic] = len(topic).to_bytes(2, "big") + topic
                n = len(head) + 2 + len(props) + len(payload)
                if n < 0x4000:  # remaining length in one or two bytes
                    fixed = (
                        bytes((_PUBLISH_QOS1 | retain, n))
                        if n < 0x80
                        else bytes((_PUBLISH_QOS1 | retain, (n & 0x7F) | 0x80, n >> 7))
                    )
                else:
                    fixed = bytes((_PUBLISH_QOS1 | retain, *_varint(n)))
                parts += (fixed, head, last.to_bytes(2, "big"), props, payload)
                mids.append(last)
            self._last_mid = last
            self._inflight_messages += len(mids)
        if len(heads) > 65536:
            heads.clear()
        self._packet_queue(paho.PUBLISH, b"".join(parts), mids[0] if mids else 0, 1, None)
        return mids


def _varint(n: int) -> list[int]:
    out = []
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return out


def _parse_publish(command: int, body: bytearray, v5: bool) -> tuple[bytes, bytes, int, int] | None:
    """(topic, payload, qos, mid) of a QoS 0/1 PUBLISH body; None for a topic alias (paho
    resolves those); IndexError when the body is too short for what it says."""
    qos = (command >> 1) & 0x03
    n = (body[0] << 8) | body[1]
    if n == 0:
        return None
    topic = bytes(body[2 : 2 + n])
    i = 2 + n
    mid = 0
    if qos:
        mid = (body[i] << 8) | body[i + 1]
        i += 2
    if v5:  # skip the properties (variable byte length)
        length, mult = 0, 1
        while True:
            b = body[i]
            i += 1
            length += (b & 0x7F) * mult
            mult <<= 7
            if not b & 0x80:
                break
        i += length
        if i > len(body):
            raise IndexError("properties run past the packet")
    return topic, bytes(body[i:]), qos, mid


def _frame_end(buf: bytearray, pos: int) -> int:
    """End offset of the complete MQTT packet at buf[pos:], 0 if incomplete, -1 if malformed."""
    end = len(buf)
    i, length, mult = pos + 1, 0, 1
    while True:
        if i >= end:
            return 0
        b = buf[i]
        i += 1
        length += (b & 0x7F) * mult
        if not b & 0x80:
            break
        mult <<= 7
        if i - pos >= 5:  # a fifth length byte: malformed
            return -1
    return i + length if i + length <= end else 0


_SHARED_INFO = paho.MQTTMessageInfo(0)  # fast-path messages: nobody waits on their info
_WAIT_PUBACK = paho.mqtt_ms_wait_for_puback


@dataclass(frozen=True, slots=True)
class Message:
    """An incoming message, converted from paho's at the boundary."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    received_at: float  # wall clock, seconds
    generation: int  # connection it came on; acks on a later connection are not sent


class MqttBridge:
    """One paho client on the running event loop.

    `on_message` is called for each incoming message on the loop thread; `on_online` after each
    (re)connection once the subscription is acknowledged.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        subscription: str | list[str] | None,
        will: tuple[str, bytes] | None = None,
        on_message: Callable[[Message], None] | None = None,
        on_online: Callable[[bool], None] | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._on_refused_cb = on_refused
        self.subscription = subscription
        self._topics = [subscription] if isinstance(subscription, str) else subscription or []
        self._on_message_cb = on_message
        self._on_online_cb = on_online
        self._loop = asyncio.get_running_loop()
        self.generation = 0
        self.connected = False
        self._closing = False
        self._paused = False
        self._sock: Any = None
        self._pending: dict[int, OnDone] = {}
        self._backlog: deque[tuple[bytes, bytes, bool, OnDone]] = deque()  # QoS 1, in order
        self._out_limit = cfg.max_inflight_out  # min(ours, the broker's Receive Maximum)
        # Largest packet we may send: min(config, the broker's CONNACK Maximum Packet Size).
        self.max_packet_bytes = cfg.max_packet_bytes
        self.refused_publishes = 0  # outputs that could not fit the broker's packet limit
        self._online = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._misc: asyncio.Task[None] | None = None
        self._first_error: str | None = None
        self._was_online = False  # a CONNACK+SUBACK since the last failure: backoff restarts
        self._online_at = -math.inf
        self._short_sessions = 0  # disconnects within SHORT_SESSION_S of getting online, in a row
        self._session_present = False

        v5 = cfg.protocol == 5
        self.client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            clean_session=None if v5 else False,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            manual_ack=True,
        )
        c = self.client
        # paho's own in-flight limit rescans every outgoing message on each PUBACK (quadratic
        # at our rates); it is switched off and the bridge keeps the limit itself (O(1)).
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        c.suppress_exceptions = False
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            c.tls_set(
                ca_certs=cfg.ca_file or None,
                certfile=cfg.cert_file or None,
                keyfile=cfg.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        if _FAST:
            c.puback_hook = self._on_puback
            c.puback_many_hook = self._on_pubacks
            c.publish_hook = self._on_publish_fast
        self._acks: list[int] = []
        self._acks_generation = 0
        self._acks_scheduled = False
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        props: Properties | None = None
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry_s
            props.ReceiveMaximum = cfg.receive_maximum
        if v5:
            c.connect_async(
                cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=False, properties=props
            )
        else:
            c.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, timeout: float | None = None) -> None:
        """Connect (retrying with backoff) and wait until subscribed; MqttError on timeout."""
        self._supervisor = asyncio.create_task(self._supervise(), name="mqtt-supervisor")
        self._misc = asyncio.create_task(self._misc_loop(), name="mqtt-misc")
        try:
            await asyncio.wait_for(self._online.wait(), timeout)
        except TimeoutError:
            raise MqttError(
                f"no connection to {self.cfg.host}:{self.cfg.port} after {timeout}s"
                + (f" ({self._first_error})" if self._first_error else "")
            ) from None

    async def _supervise(self) -> None:
        backoff = self.cfg.reconnect_min_s
        while not self._closing:
            self._disconnected.clear()
            try:
                rc = self.client.reconnect()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise OSError(paho.error_string(rc))
            except (OSError, ssl.SSLError) as e:
                self._first_error = self._first_error or str(e)
                log.warning("mqtt_connect_failed", error=str(e), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                continue
            await self._disconnected.wait()
            if self._closing:
                break
            backoff = self.cfg.reconnect_min_s if self._was_online else backoff
            self._was_online = False
            log.warning("mqtt_reconnecting", retry_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.cfg.reconnect_max_s)

    async def _misc_loop(self) -> None:
        while True:
            if self._sock is not None:
                self.client.loop_misc()
            await asyncio.sleep(1.0)

    async def wait_published(self, timeout: float) -> bool:
        """Wait until every QoS 1 publish is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._pending or self._backlog:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Clean DISCONNECT (the session and its unacked windows stay on the broker)."""
        self._closing = True
        if self.connected:
            self.resume_reading()
            self.client.disconnect()
            deadline = time.monotonic() + timeout
            while self._sock is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        self._disconnected.set()
        for task in (self._supervisor, self._misc):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._sock is not None:
            self._on_socket_close(self.client, None, self._sock)

    # ------------------------------------------------------------------ publish / ack

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Queue a publish; `on_done` runs when the broker acknowledged it (QoS 1: PUBACK).

        At most `max_inflight_out` (or the broker's Receive Maximum) QoS 1 publishes are
        unacknowledged at once; the rest wait here in order. While disconnected paho keeps
        QoS 1 messages and sends them after reconnecting.

        A publish larger than the broker's packet limit is never sent (the broker would drop
        the connection, and paho would resend it on every reconnect): it is logged, counted
        and completed. Callers fit their payloads with `max_payload` first."""
        if self._too_large(topic, payload, qos, on_done):
            return
        if qos == 0:
            self._send_paho(topic.encode(), payload, 0, retain, on_done)
            return
        self.publish_many([(topic.encode(), payload, on_done)], retain)

    def publish_many(
        self, items: Sequence[tuple[bytes, bytes, OnDone]], retain: bool = False
    ) -> None:
        """QoS 1 publishes of (topic bytes, payload, on_done), in order, framed into one socket
        write as far as the in-flight limit allows (the rest wait in the backlog)."""
        limit = self.max_packet_bytes - 16  # header, lengths, packet id: never more than 16
        if any(len(t) + len(p) > limit for t, p, _ in items):
            items = [
                (t, p, d)
                for t, p, d in items
                if not self._too_large(t.decode("utf-8", "replace"), p, 1, d)
            ]
        if self._backlog:
            self._backlog.extend((t, p, retain, d) for t, p, d in items)
            return
        room = self._out_limit - len(self._pending)
        if room < len(items):
            self._backlog.extend((t, p, retain, d) for t, p, d in items[max(room, 0) :])
            items = items[: max(room, 0)]
        if items:
            self._send_many([(t, p, retain, d) for t, p, d in items])

    def _send_many(self, items: Sequence[tuple[bytes, bytes, bool, OnDone]]) -> None:
        mids = self.client.publish_many([(t, p, r) for t, p, r, _ in items]) if _FAST else None
        if mids is None:
            for topic, payload, retain, on_done in items:
                self._send_paho(topic, payload, 1, retain, on_done)
            return
        pending = self._pending
        for mid, item in zip(mids, items, strict=True):
            pending[mid] = item[3]

    def _send_paho(
        self, topic: bytes, payload: bytes, qos: int, retain: bool, on_done: OnDone
    ) -> None:
        info = self.client.publish(topic.decode(), payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        if qos == 0:
            if on_done is not None:
                on_done()
            return
        self._pending[info.mid] = on_done

    def _refill(self) -> None:
        """Move backlog into the in-flight window freed by PUBACKs (one write for all)."""
        room = self._out_limit - len(self._pending)
        if room <= 0 or not self._backlog:
            return
        take = [self._backlog.popleft() for _ in range(min(room, len(self._backlog)))]
        self._send_many(take)

    def _too_large(self, topic: str, payload: bytes, qos: int, on_done: OnDone) -> bool:
        """Refuse (log, count, complete) a publish over the broker's packet limit."""
        size = publish_packet_bytes(topic, len(payload), qos, self.cfg.protocol == 5)
        if size <= self.max_packet_bytes:
            return False
        self._refused()
        log.error(
            "publish_too_large",
            topic=topic[:200],
            packet_bytes=size,
            max_packet_bytes=self.max_packet_bytes,
        )
        if on_done is not None:
            on_done()
        return True

    def _refused(self) -> None:
        self.refused_publishes += 1
        if self._on_refused_cb is not None:
            self._on_refused_cb()

    def max_payload(self, topic: str, qos: int = 1) -> int:
        """The largest payload a publish to `topic` may carry under the broker's packet limit."""
        empty = publish_packet_bytes(topic, 0, qos, self.cfg.protocol == 5)
        # the remaining-length field grows with the payload: count it at its largest
        return self.max_packet_bytes - empty - (_varint_len(self.max_packet_bytes) - 1)

    @property
    def unacked_publishes(self) -> int:
        return len(self._pending) + len(self._backlog)

    def ack(self, message: Message) -> None:
        """Acknowledge an incoming QoS 1 message, unless it came on an earlier connection (the
        broker redelivers those; a duplicate is scored twice, never lost)."""
        if message.qos == 1 and message.generation == self.generation and self.connected:
            if not _FAST:
                self.client.ack(message.mid, 1)
                return
            if self._acks and self._acks_generation != self.generation:
                self._acks.clear()
            self._acks_generation = self.generation
            self._acks.append(message.mid)
            if not self._acks_scheduled:  # every ack of this loop iteration in one write
                self._acks_scheduled = True
                self._loop.call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._acks_scheduled = False
        acks, self._acks = self._acks, []
        if acks and self._acks_generation == self.generation and self.connected:
            self.client.ack_many(acks)

    def pause_reading(self) -> None:
        """Backpressure: stop reading the socket (the broker's and TCP's buffers hold the rest)."""
        if not self._paused:
            self._paused = True
            if self._sock is not None:
                self._loop.remove_reader(self._sock)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._sock is not None:
                self._loop.add_reader(self._sock, self._read)
                if _FAST and self.client.buffered_packet():
                    # packets read before the pause wait in our buffer, not in the socket:
                    # no readable event would come for them
                    self._loop.call_soon(self._read)

    @property
    def paused(self) -> bool:
        return self._paused

    # ------------------------------------------------------------------ paho callbacks

    def _read(self) -> None:
        self.client.loop_read()
        self._refill()
        sock = self._sock
        if (
            sock is not None
            and not self._paused
            and (
                (isinstance(sock, ssl.SSLSocket) and sock.pending())
                or (_FAST and self.client.buffered_packet())
            )
        ):
            self._loop.call_soon(self._read)

    def _write(self) -> None:
        self.client.loop_write()

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock
        if not self._paused:
            self._loop.add_reader(sock, self._read)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(sock)
        with contextlib.suppress(Exception):
            self._loop.remove_writer(sock)
        self._sock = None

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._loop.add_writer(sock, self._write)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._loop.remove_writer(sock)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self._first_error = self._first_error or f"broker refused: {reason}"
            log.error("mqtt_refused", reason=str(reason))
            return
        self.generation += 1
        self.connected = True
        log.info(
            "mqtt_connected",
            host=self.cfg.host,
            port=self.cfg.port,
            session_present=bool(flags.session_present),
            generation=self.generation,
        )
        self._session_present = bool(flags.session_present)
        server_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        self._out_limit = min(self.cfg.max_inflight_out, int(server_max or 65535))
        server_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
        self.max_packet_bytes = min(self.cfg.max_packet_bytes, int(server_packet or 1 << 28))
        self._drop_oversize_inflight()
        if not self._topics:
            self._set_online()
            return
        client.subscribe([(t, self.cfg.qos) for t in self._topics])

    def _drop_oversize_inflight(self) -> None:
        """Publishes paho resends after this CONNACK that no longer fit a smaller limit would
        get us disconnected on every reconnect: complete them here instead (paho calls
        on_connect before it resends)."""
        out = getattr(self.client, "_out_messages", None)
        if not out:
            return
        v5 = self.cfg.protocol == 5
        for mid, m in list(out.items()):
            size = publish_packet_bytes(m.topic, len(m.payload), m.qos, v5)
            if size > self.max_packet_bytes:
                del out[mid]
                self._refused()
                log.error(
                    "publish_too_large",
                    topic=m.topic[:200],
                    packet_bytes=size,
                    max_packet_bytes=self.max_packet_bytes,
                )
                on_done = self._pending.pop(mid, None)
                if on_done is not None:
                    self._loop.call_soon(on_done)
        self._loop.call_soon(self._drain_backlog)

    def _drain_backlog(self) -> None:
        self._refill()

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[Any], props: Any
    ) -> None:
        bad = [str(r) for r in reasons if r.is_failure]
        if bad:
            log.error("mqtt_subscribe_refused", topic=self.subscription, reasons=bad)
            self._first_error = self._first_error or f"subscription refused: {bad}"
            client.disconnect()
            return
        log.info("mqtt_subscribed", topic=self.subscription, qos=self.cfg.qos)
        self._set_online()

    def _set_online(self) -> None:
        self._was_online = True
        self._online_at = time.monotonic()
        self._online.set()
        if self._on_online_cb is not None:
            self._on_online_cb(self._session_present)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        was = self.connected
        self.connected = False
        if not self._closing:
            log.warning("mqtt_disconnected", reason=str(reason), was_connected=was)
            # Dropped again and again right after getting online: mostly another client with
            # our client id (mosquitto 2.0.11 gives no reason when it takes a session over).
            online_for = time.monotonic() - self._online_at
            self._short_sessions = self._short_sessions + 1 if online_for < SHORT_SESSION_S else 0
            if "taken over" in str(reason).lower() or self._short_sessions == FLAPPING_AFTER:
                log.error(
                    "mqtt_session_taken_over",
                    client_id=self.cfg.client_id,
                    reason=str(reason),
                    hint="another client connects with this client id (with the shipped "
                    "broker config: the same username); give each instance its own user",
                )
        self._disconnected.set()

    def _on_publish_fast(self, topic: bytes, payload: bytes, qos: int, mid: int) -> None:
        if self._on_message_cb is not None:
            self._on_message_cb(
                Message(
                    topic.decode("utf-8", "replace"),
                    payload,
                    qos,
                    mid,
                    time.time(),
                    self.generation,
                )
            )

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self._on_message_cb is None:
            return
        self._on_message_cb(
            Message(msg.topic, bytes(msg.payload), msg.qos, msg.mid, time.time(), self.generation)
        )

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        """paho's PUBACK path (only when the fast one is unavailable, and for QoS 0)."""
        failed = reason is not None and getattr(reason, "is_failure", False)
        self._on_puback(mid, 0x80 if failed else 0)
        self._refill()

    def _on_pubacks(self, mids: list[int]) -> None:
        pending = self._pending
        for mid in mids:
            on_done = pending.pop(mid, None)
            if on_done is not None:
                on_done()

    def _on_puback(self, mid: int, reason: int) -> None:
        try:
            on_done = self._pending.pop(mid)
        except KeyError:
            return
        if reason >= 0x80:
            log.error("mqtt_publish_refused", mid=mid, reason=reason)
        if on_done is not None:
            on_done()
