"""Test helpers: the daemon as a subprocess, and MQTT clients that publish and collect."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[2]


def write_config(
    path: Path, broker_port: int, model_path: Path, /, **sections: dict[str, Any]
) -> Path:
    """A daemon config for a test broker; `sections` override/extend the TOML tables."""
    base: dict[str, dict[str, Any]] = {
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker_port,
            "client_id": f"mon-{uuid.uuid4().hex[:8]}",
        },
        "model": {"path": str(model_path), "provider": "cpu", "intra_op_threads": 1},
        "batch": {"max_batch": 64, "max_wait_ms": 2.0},
        "service": {
            "instance_id": f"t{uuid.uuid4().hex[:6]}",
            "log_format": "json",
            "drain_timeout_s": 20.0,
        },
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@dataclass
class Daemon:
    """`python -m monitor run --config F` as a child process, stderr kept for the test."""

    config: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self, env: dict[str, str] | None = None) -> Daemon:
        self.log_path = self.config.with_suffix(f".{time.monotonic_ns()}.log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(self.config)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.log_path is None or not self.log_path.exists():
            return out
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events():
                if ev.get("event") == name:
                    return ev
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"daemon never logged {name!r}:\n{self.output()[-4000:]}")


@dataclass
class Collector:
    """Subscribes to topics and keeps every message (topic, decoded JSON)."""

    port: int
    topics: Iterable[str]
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in self.topics])
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("collector not subscribed")

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            data = json.loads(msg.payload)
        except ValueError:
            data = {"_raw": msg.payload}
        with self._lock:
            self.messages.append((msg.topic, data))

    def of(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [d for t, d in self.messages if t.endswith(suffix)]

    def wait_for(self, cond: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what or cond}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Publisher:
    """A device-side client publishing at QoS 1 and waiting for the broker's PUBACKs."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._infos: list[paho.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self._infos.append(self.client.publish(topic, payload, qos=qos))

    def flush(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for info in self._infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self._infos.clear()

    def close(self) -> None:
        self.flush()
        self.client.loop_stop()
        self.client.disconnect()


def wait_online(collector: Collector, instance_id: str, timeout: float = 30.0) -> dict[str, Any]:
    topic = f"ecg-monitor/{instance_id}/status"

    def online() -> dict[str, Any] | None:
        with collector._lock:
            for t, d in reversed(collector.messages):
                if t == topic:
                    return d if d.get("state") == "online" else None
        return None

    collector.wait_for(lambda: online() is not None, timeout, f"{topic} online")
    result = online()
    assert result is not None
    return result


def window_keys(report: dict[str, Any]) -> list[tuple[str, int]]:
    """(device_id, seq) of every window one score report (`<prefix>/<device>/score`) covers."""
    return [(report["device_id"], report["seq"] + i) for i in range(report["count"])]
