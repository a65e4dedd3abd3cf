"""A small synchronous paho client for broker tests: connect, subscribe, publish, collect."""

from __future__ import annotations

import itertools
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

_ids = itertools.count()


@dataclass
class BrokerClient:
    """One paho client on its own network thread; every callback result lands in a list."""

    port: int
    username: str | None = None
    password: str | None = None
    ca: Path | None = None  # None = plain MQTT
    protocol: int = mqtt.MQTTv5
    client_id: str = ""
    session_expiry_s: int = 0
    clean_start: bool = True
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    connects: list[str] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    subacks: list[list[str]] = field(default_factory=list)
    pubacks: dict[int, str] = field(default_factory=dict)
    _client: Any = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.client_id = (
            self.client_id or f"{self.username or 'anon'}-{next(_ids)}-{time.time_ns()}"
        )
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=self.protocol
        )
        if self.ca is not None:
            c.tls_set(ca_certs=str(self.ca), cert_reqs=ssl.CERT_REQUIRED)
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        c.max_inflight_messages_set(1000)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        self._client = c

    # ---- callbacks (paho thread) ----
    def _record(self, fn: Any) -> None:
        with self._cond:
            fn()
            self._cond.notify_all()

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self._record(lambda: self.connects.append(str(rc)))

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self._record(lambda: self.disconnects.append(str(rc)))

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        self._record(lambda: self.messages.append((msg.topic, bytes(msg.payload))))

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: Any, props: Any) -> None:
        self._record(lambda: self.subacks.append([str(r) for r in rcs]))

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        self._record(lambda: self.pubacks.__setitem__(mid, str(rc)))

    # ---- API (test thread) ----
    def wait(self, predicate: Any, timeout: float = 10.0) -> bool:
        with self._cond:
            return bool(self._cond.wait_for(predicate, timeout))

    def connect(self, timeout: float = 10.0) -> str:
        """Connect and return the CONNACK reason ('Success', 'Not authorized', ...)."""
        kwargs: dict[str, Any] = {}
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
            kwargs = {"clean_start": self.clean_start, "properties": props}
        n = len(self.connects)
        self._client.connect("localhost", self.port, keepalive=30, **kwargs)
        self._client.loop_start()
        assert self.wait(lambda: len(self.connects) > n or self.disconnects, timeout), "no CONNACK"
        return self.connects[-1] if len(self.connects) > n else f"closed: {self.disconnects[-1]}"

    def subscribe(self, topic: str, qos: int = 1) -> list[str]:
        n = len(self.subacks)
        self._client.subscribe(topic, qos=qos)
        assert self.wait(lambda: len(self.subacks) > n), f"no SUBACK for {topic}"
        return self.subacks[n]

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> str:
        """Publish and return the PUBACK reason (QoS 1), or 'sent' (QoS 0)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            info.wait_for_publish(5)
            return "sent"
        ok = self.wait(lambda: info.mid in self.pubacks or bool(self.disconnects), 10)
        assert ok, f"no PUBACK for {topic}"
        if info.mid in self.pubacks:
            return self.pubacks[info.mid]
        return f"closed: {self.disconnects[-1]}"

    def publish_many(self, topic: str, payloads: list[bytes], timeout: float = 60.0) -> None:
        """QoS 1 publishes, pipelined; returns once every one is acknowledged with success."""
        mids = [self._client.publish(topic, p, qos=1).mid for p in payloads]
        assert self.wait(lambda: all(m in self.pubacks for m in mids), timeout), "missing PUBACKs"
        assert {self.pubacks[m] for m in mids} <= {"Success", "No matching subscribers"}

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Queue a publish (paho keeps QoS 1 messages across reconnects); returns its mid."""
        return int(self._client.publish(topic, payload, qos=qos).mid)

    def wait_acked(self, mids: list[int], timeout: float = 60.0) -> bool:
        return self.wait(lambda: all(m in self.pubacks for m in mids), timeout)

    def received(self, topic: str | None = None) -> list[bytes]:
        with self._cond:
            return [p for t, p in self.messages if topic is None or t == topic]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
