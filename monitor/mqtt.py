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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
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
        self._pending: dict[int, Callable[[], None] | None] = {}
        self._backlog: deque[tuple[str, bytes, int, bool, Callable[[], None] | None]] = deque()
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
        self.client = paho.Client(
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
        size = publish_packet_bytes(topic, len(payload), qos, self.cfg.protocol == 5)
        if size > self.max_packet_bytes:
            self._refused()
            log.error(
                "publish_too_large",
                topic=topic[:200],
                packet_bytes=size,
                max_packet_bytes=self.max_packet_bytes,
            )
            if on_done is not None:
                on_done()
            return
        if qos and (self._backlog or len(self._pending) >= self._out_limit):
            self._backlog.append((topic, payload, qos, retain, on_done))
            return
        self._send(topic, payload, qos, retain, on_done)

    def _send(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        on_done: Callable[[], None] | None,
    ) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if qos == 0:
            if on_done is not None:
                on_done()
            return
        self._pending[info.mid] = on_done

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
            self.client.ack(message.mid, 1)

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

    @property
    def paused(self) -> bool:
        return self._paused

    # ------------------------------------------------------------------ paho callbacks

    def _read(self) -> None:
        self.client.loop_read()
        sock = self._sock
        if (
            sock is not None
            and not self._paused
            and isinstance(sock, ssl.SSLSocket)
            and sock.pending()
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
        while self._backlog and len(self._pending) < self._out_limit:
            self._send(*self._backlog.popleft())

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

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self._on_message_cb is None:
            return
        self._on_message_cb(
            Message(msg.topic, bytes(msg.payload), msg.qos, msg.mid, time.time(), self.generation)
        )

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        try:
            on_done = self._pending.pop(mid)
        except KeyError:
            return
        if reason is not None and getattr(reason, "is_failure", False):
            log.error("mqtt_publish_refused", mid=mid, reason=str(reason))
        self._drain_backlog()
        if on_done is not None:
            on_done()
