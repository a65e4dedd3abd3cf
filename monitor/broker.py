"""Reaching a broker (shared client options) and starting an embedded one for the demo.

The embedded broker is `mosquitto` from PATH when present, else amqtt (pure Python, MQTT 3.1.1
only, no in-flight limit, no redelivery after reconnect: fine for a demo, not for production).
Both run as child processes in their own session so that they can be stopped as a group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from monitor.errors import MonitorError

MqttVersion = Literal["5", "3.1.1"]

# Queue limits set on purpose: mosquitto's default max_queued_messages (1000) silently drops
# QoS 1 messages to a slow subscriber; 0 means no limit. max_inflight_messages bounds the
# unacknowledged QoS 1 messages sent to MQTT 3.1.1 clients (MQTT 5 clients name their own
# Receive Maximum): sized to the daemon's receive maximum.
MOSQUITTO_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
max_inflight_messages {inflight}
max_queued_messages 0
max_queued_bytes 0
max_packet_size 1048576
persistence false
log_dest file {data_dir}/mosquitto.log
log_type error
log_type warning
"""


class BrokerError(MonitorError):
    """A broker that cannot be reached or started."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> BrokerAddress:
        """`host:port`, `host` (port 1883) or `[v6addr]:port`."""
        host, sep, port = text.rpartition(":")
        if not sep or "]" in port:
            host, port = text, "1883"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise argparse.ArgumentTypeError(f"broker must be HOST:PORT, got {text!r}")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def add_client_options(
    parser: argparse.ArgumentParser,
    *,
    default: str | None = "127.0.0.1:1883",
    broker_help: str = "MQTT broker",
) -> None:
    """The options every MQTT client command shares."""
    g = parser.add_argument_group("broker")
    g.add_argument(
        "--broker",
        type=BrokerAddress.parse,
        default=BrokerAddress.parse(default) if default else None,
        metavar="HOST:PORT",
        help=broker_help,
    )
    g.add_argument("--username", help="MQTT user name (default: connect without one)")
    g.add_argument("--password-file", type=Path, help="file holding the MQTT password")
    g.add_argument("--tls", action="store_true", help="connect with TLS")
    g.add_argument("--ca-file", type=Path, help="CA bundle for TLS (implies --tls)")
    g.add_argument(
        "--mqtt-version",
        choices=["5", "3.1.1"],
        default="5",
        help="protocol version (3.1.1 for brokers such as amqtt that lack MQTT 5)",
    )


@dataclass
class ClientOptions:
    broker: BrokerAddress
    username: str | None = None
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    mqtt_version: MqttVersion = "5"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClientOptions:
        return cls(
            broker=args.broker,
            username=args.username,
            password_file=args.password_file,
            tls=bool(args.tls),
            ca_file=args.ca_file,
            mqtt_version=args.mqtt_version,
        )


def connect(
    opts: ClientOptions,
    client_id: str,
    *,
    on_message: Any = None,
    subscriptions: list[tuple[str, int]] | None = None,
    timeout: float = 10.0,
) -> mqtt.Client:
    """A started paho client, connected and subscribed (CONNACK and SUBACK received).

    BrokerError otherwise. Subscriptions are renewed on every (re)connect.
    """
    v5 = opts.mqtt_version == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else True,
    )
    if opts.username is not None:
        password = None
        if opts.password_file is not None:
            password = opts.password_file.read_text().strip()
        client.username_pw_set(opts.username, password)
    if opts.tls or opts.ca_file is not None:
        client.tls_set(ca_certs=str(opts.ca_file) if opts.ca_file else None)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    subscribed = threading.Event()
    failure: list[str] = []

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            failure.append(str(reason))
        elif subscriptions:
            c.subscribe(list(subscriptions))
        else:
            subscribed.set()
        connected.set()

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        refused = [str(rc) for rc in codes if rc.is_failure]
        if refused:
            failure.append(f"subscription refused: {', '.join(refused)}")
        subscribed.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    if on_message is not None:
        client.on_message = on_message
    try:
        client.connect(opts.broker.host, opts.broker.port, keepalive=30)
    except OSError as e:
        raise BrokerError(f"cannot reach MQTT broker {opts.broker}: {e}") from None
    client.loop_start()
    deadline = time.monotonic() + timeout
    ok = connected.wait(timeout) and subscribed.wait(max(deadline - time.monotonic(), 0.0))
    if not ok or failure:
        client.loop_stop()
        with contextlib.suppress(Exception):
            client.disconnect()
        why = failure[0] if failure else f"no CONNACK/SUBACK within {timeout:.0f}s"
        raise BrokerError(f"MQTT broker {opts.broker} refused the connection: {why}")
    return client


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_process_group(proc: subprocess.Popen[Any], *, grace: float = 10.0) -> int | None:
    """SIGTERM the child's process group, wait up to `grace` s, then SIGKILL; the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # The leader may be gone while others in its group live on.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def _mosquitto_version(exe: str) -> str:
    """The version `mosquitto -h` prints on its first line ("mosquitto version 2.0.11")."""
    try:
        done = subprocess.run([exe, "-h"], check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "(version unknown)"
    words = (done.stdout or done.stderr).split()
    return (
        words[2]
        if words[:2] == ["mosquitto", "version"] and len(words) > 2
        else "(version unknown)"
    )


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


@dataclass
class EmbeddedBroker:
    """A broker child process on 127.0.0.1 and a free port; `stop()` leaves nothing behind."""

    prefer: Literal["auto", "mosquitto", "amqtt"] = "auto"
    inflight: int = 1000
    host: str = "127.0.0.1"
    port: int = 0
    kind: Literal["mosquitto", "amqtt"] = "mosquitto"
    program: str = ""  # what runs, e.g. "mosquitto 2.0.11 from /usr/sbin/mosquitto"
    proc: subprocess.Popen[bytes] | None = None
    _dir: Path | None = field(default=None, repr=False)

    @property
    def mqtt_version(self) -> MqttVersion:
        return "5" if self.kind == "mosquitto" else "3.1.1"

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress(self.host, self.port)

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        exe = shutil.which("mosquitto")
        if self.prefer == "mosquitto" and exe is None:
            raise BrokerError("mosquitto is not on PATH")
        use_mosquitto = exe is not None and self.prefer != "amqtt"
        self._dir = Path(tempfile.mkdtemp(prefix="ecg-broker-"))
        self.port = self.port or free_port()
        if use_mosquitto:
            assert exe is not None
            self.kind = "mosquitto"
            self.program = f"mosquitto {_mosquitto_version(exe)} from {exe}"
            conf = self._dir / "mosquitto.conf"
            conf.write_text(
                MOSQUITTO_CONFIG.format(port=self.port, inflight=self.inflight, data_dir=self._dir)
            )
            cmd = [exe, "-c", str(conf)]
        else:
            self.kind = "amqtt"
            self.program = f"amqtt {_package_version('amqtt')} (pure Python, {sys.executable})"
            cmd = [sys.executable, "-m", "monitor.broker", "amqtt", "--port", str(self.port)]
        log = (self._dir / "broker.out").open("wb")
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.log()
                self.stop()
                raise BrokerError(f"{self.kind} did not start on port {self.port}:\n{text[-2000:]}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        if self._dir is None:
            return ""
        parts = [
            p.read_text(errors="replace")
            for p in (self._dir / "broker.out", self._dir / "mosquitto.log")
            if p.exists()
        ]
        return "".join(parts)

    def stop(self) -> None:
        try:
            if self.proc is not None:
                stop_process_group(self.proc, grace=5.0)
        finally:
            self.proc = None
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _run_amqtt(port: int) -> int:
    """Serve amqtt on 127.0.0.1:port until SIGTERM or SIGINT."""
    from amqtt.broker import Broker  # noqa: PLC0415 (optional: the demo extra)

    logging.basicConfig(level=logging.WARNING)
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        broker = Broker(config)
        await broker.start()
        await stop.wait()
        await broker.shutdown()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        prog="python -m monitor.broker", description="embedded amqtt broker"
    )
    p.add_argument("kind", choices=["amqtt"])
    p.add_argument("--port", type=int, required=True)
    sys.exit(_run_amqtt(p.parse_args().port))
