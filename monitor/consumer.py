"""Alert consumer: subscribes to alerts (and optionally rejects) and prints them as they come.

A readable table on a terminal, one JSON object per line when piped.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
from dataclasses import dataclass
from typing import IO, Any, Literal

import paho.mqtt.client as mqtt

from monitor import wire
from monitor.broker import ClientOptions, add_client_options, connect
from monitor.errors import MonitorError

Kind = Literal["alert", "rejected", "score"]


@dataclass(frozen=True, slots=True)
class Event:
    """One alert, reject or score message, parsed at the boundary."""

    kind: Kind
    device_id: str
    payload: dict[str, Any]
    received_at: float  # this consumer's clock

    @classmethod
    def from_message(
        cls, topic: str, payload: bytes | bytearray, prefix: str, received_at: float
    ) -> Event | None:
        """None for a topic or payload that is not one of ours."""
        head = prefix + "/"
        if not topic.startswith(head):
            return None
        device_id, _, kind = topic[len(head) :].rpartition("/")
        if kind not in ("alert", "rejected", "score") or not wire.DEVICE_ID_RE.match(device_id):
            return None
        try:
            obj = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(obj, dict):
            return None
        return cls(kind, device_id, obj, received_at)  # type: ignore[arg-type]


class Subscriber:
    """A paho client whose callbacks only parse messages and queue them for the caller's thread."""

    def __init__(
        self,
        opts: ClientOptions,
        *,
        prefix: str = "ecg",
        devices: list[str] | None = None,
        kinds: tuple[Kind, ...] = ("alert",),
        client_id: str | None = None,
    ) -> None:
        for d in devices or []:
            if not wire.DEVICE_ID_RE.match(d):
                raise MonitorError(f"device id {d!r} is not 1-64 of [A-Za-z0-9_.-]")
        self.prefix = prefix
        self.events: queue.Queue[Event] = queue.Queue()
        self.topics = [f"{prefix}/{d}/{k}" for d in (devices or ["+"]) for k in kinds]
        self.client = connect(
            opts,
            client_id or f"ecg-alerts-{time.time_ns() % 10**9}",
            on_message=self._on_message,
            subscriptions=[(t, 1) for t in self.topics],
        )

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        event = Event.from_message(msg.topic, msg.payload, self.prefix, time.time())
        if event is not None:
            self.events.put(event)

    def get(self, timeout: float) -> Event | None:
        try:
            return self.events.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _num(v: object, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, int | float) else "-"


class View:
    """Prints events: an aligned table (`table`) or JSON lines (`json`)."""

    HEADER = (
        f"{'time':<12}  {'device':<16} {'seq':>8} {'score':>9} {'thresh':>9} {'peak':>5} "
        f"{'delay ms':>9}"
    )

    def __init__(self, out: IO[str], style: Literal["table", "json"]) -> None:
        self.out = out
        self.style = style
        self.rows = 0

    def show(self, e: Event, note: str = "") -> None:
        """One event; `note` (table only) is appended as a last column."""
        if self.style == "json":
            self.out.write(json.dumps(e.payload, separators=(",", ":")) + "\n")
            self.out.flush()
            return
        if self.rows == 0:
            self.out.write(self.HEADER + "\n")
        p = e.payload
        if e.kind == "rejected":
            reason = str(p.get("reason", ""))[:60]
            code = p.get("code", "?")
            line = f"{_clock(e.received_at):<12}  {e.device_id:<16} REJECTED {code}: {reason}"
        else:
            ts = p.get("ts")
            delay = (e.received_at - ts) * 1000 if isinstance(ts, int | float) else None
            line = (
                f"{_clock(e.received_at):<12}  {e.device_id:<16} {_num(p.get('seq'), 'd'):>8} "
                f"{_num(p.get('score'), '.2f'):>9} {_num(p.get('threshold'), '.2f'):>9} "
                f"{_num(p.get('peak_index'), 'd'):>5} {_num(delay, '.1f'):>9}"
            )
        self.out.write(f"{line}  {note}\n" if note else line + "\n")
        self.out.flush()
        self.rows += 1


def configure(parser: argparse.ArgumentParser) -> None:
    add_client_options(parser)
    parser.add_argument("--prefix", default="ecg", help="topic prefix")
    parser.add_argument(
        "--device",
        action="append",
        metavar="ID",
        help="only this device, repeatable (default: every device)",
    )
    parser.add_argument("--rejects", action="store_true", help="also show rejected messages")
    parser.add_argument(
        "--count", type=int, help="exit after this many alerts (default: run until Ctrl-C)"
    )
    parser.add_argument(
        "--duration", type=float, help="exit after this many seconds (default: no limit)"
    )
    parser.add_argument(
        "--format",
        choices=["auto", "table", "json"],
        default="auto",
        help="auto: a table on a terminal, JSON lines when piped",
    )


def main(args: argparse.Namespace) -> int:
    auto: Literal["table", "json"] = "table" if sys.stdout.isatty() else "json"
    style: Literal["table", "json"] = auto if args.format == "auto" else args.format
    kinds: tuple[Kind, ...] = ("alert", "rejected") if args.rejects else ("alert",)
    try:
        sub = Subscriber(
            ClientOptions.from_args(args), prefix=args.prefix, devices=args.device, kinds=kinds
        )
    except MonitorError as e:
        print(f"ecg-monitor alerts: {e}", file=sys.stderr)
        return 2
    print(
        f"alerts: listening on {', '.join(sub.topics)} at {args.broker}",
        file=sys.stderr,
        flush=True,
    )
    view = View(sys.stdout, style)
    end = time.monotonic() + args.duration if args.duration is not None else float("inf")
    alerts = 0
    try:
        while args.count is None or alerts < args.count:
            left = end - time.monotonic()
            if left <= 0:
                break
            event = sub.get(min(left, 0.5))
            if event is None:
                continue
            view.show(event)
            alerts += event.kind == "alert"
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        sub.close()
    return 0
