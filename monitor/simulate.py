"""A simulated device fleet publishing heartbeat windows, with optional ground truth.

Beats come from the synthetic generator (numpy only) or a UCR file replayed with its labels.
Each beat is encoded once up front; a message is then a header plus pre-encoded rows.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import importlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import paho.mqtt.client as mqtt

from monitor import wire
from monitor.beats import NORMAL_CLASS, read_ucr, synthetic_beats
from monitor.broker import ClientOptions, add_client_options, connect
from monitor.errors import DataError, MonitorError

Format = Literal["json", "binary"]
SYNTHETIC_POOL = 2000  # beats generated up front, half normal, half anomalous
SYNTHETIC_DEFAULT_FRACTION = 0.1
JITTER = 0.05  # beat-to-beat variation of the interval (heart-rate variability)


class SimulateError(MonitorError):
    """A bad source, option or ground-truth file."""


@dataclass(frozen=True)
class BeatPool:
    """Labelled beats with their payload fragments encoded once."""

    name: str
    x: np.ndarray  # float32 [n, length]
    y: np.ndarray  # int64 [n]
    json_rows: list[str] = field(repr=False)
    bin_rows: list[bytes] = field(repr=False)

    @classmethod
    def build(cls, name: str, x: np.ndarray, y: np.ndarray) -> BeatPool:
        x = np.ascontiguousarray(x, dtype=np.float32)
        json_rows = [json.dumps(row, separators=(",", ":")) for row in x.tolist()]
        bin_rows = [row.astype("<f4").tobytes() for row in x]
        return cls(name, x, np.asarray(y, dtype=np.int64), json_rows, bin_rows)

    @classmethod
    def from_source(cls, source: str, *, seed: int = 0) -> BeatPool:
        """`synthetic[:N]` or `ucr:PATH`."""
        kind, _, arg = source.partition(":")
        if kind == "synthetic":
            try:
                x, y = synthetic_beats(
                    int(arg) if arg else SYNTHETIC_POOL, anomaly_fraction=0.5, seed=seed
                )
            except (ValueError, DataError) as e:
                raise SimulateError(f"bad synthetic source {source!r}: {e}") from None
            return cls.build("synthetic", x, y)
        if kind == "ucr" and arg:
            try:
                x, y = read_ucr(Path(arg))
            except DataError as e:
                raise SimulateError(f"cannot replay {e}") from None
            return cls.build(Path(arg).name, x, y)
        raise SimulateError(f"source must be synthetic[:N] or ucr:PATH, got {source!r}")

    @property
    def length(self) -> int:
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True, slots=True)
class SentWindow:
    device_id: str
    seq: int
    label: int
    sent_at: float

    @property
    def is_anomaly(self) -> bool:
        return self.label != NORMAL_CLASS


class Picker:
    """Chooses the beat of each window: by anomaly fraction, or the source's order."""

    def __init__(self, pool: BeatPool, devices: int, fraction: float | None, seed: int) -> None:
        self.pool = pool
        self.fraction = fraction
        self.rng = np.random.default_rng(seed + 1)
        normal = pool.y == NORMAL_CLASS
        self.normal = np.flatnonzero(normal)
        self.anomalous = np.flatnonzero(~normal)
        if fraction is not None:
            if not 0.0 <= fraction <= 1.0:
                raise SimulateError(f"anomaly fraction must be in [0, 1], got {fraction}")
            if fraction < 1.0 and self.normal.size == 0:
                raise SimulateError(f"{pool.name} has no normal beats")
            if fraction > 0.0 and self.anomalous.size == 0:
                raise SimulateError(f"{pool.name} has no anomalous beats")
        # Replay in order: each device starts at its own offset into the file.
        self.cursor = [i * len(pool) // max(devices, 1) for i in range(devices)]

    def take(self, device: int, k: int) -> list[int]:
        if self.fraction is None:
            start = self.cursor[device]
            self.cursor[device] = start + k
            return [(start + i) % len(self.pool) for i in range(k)]
        out = []
        for anomalous in self.rng.random(k) < self.fraction:
            bag = self.anomalous if anomalous else self.normal
            out.append(int(bag[self.rng.integers(bag.size)]))
        return out


class GroundTruthWriter:
    """device_id, seq, label, is_anomaly, sent_at per window: CSV, or JSON lines (.jsonl)."""

    FIELDS = ("device_id", "seq", "label", "is_anomaly", "sent_at")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.jsonl = path.suffix.lower() in (".jsonl", ".json", ".ndjson")
        self.file: IO[str] = path.open("w", newline="")
        self.csv = None if self.jsonl else csv.writer(self.file)
        if self.csv is not None:
            self.csv.writerow(self.FIELDS)

    def write(self, rows: list[SentWindow]) -> None:
        for r in rows:
            if self.csv is not None:
                self.csv.writerow(
                    (r.device_id, r.seq, r.label, int(r.is_anomaly), f"{r.sent_at:.6f}")
                )
            else:
                rec = {
                    "device_id": r.device_id,
                    "seq": r.seq,
                    "label": r.label,
                    "is_anomaly": r.is_anomaly,
                    "sent_at": round(r.sent_at, 6),
                }
                self.file.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        self.file.close()


def read_ground_truth(path: Path) -> list[SentWindow]:
    """Rows of a ground-truth file in either format."""
    out = []
    with path.open() as f:
        if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            recs: Iterator[dict[str, str]] = (json.loads(line) for line in f if line.strip())
        else:
            recs = csv.DictReader(f)
        for r in recs:
            out.append(
                SentWindow(str(r["device_id"]), int(r["seq"]), int(r["label"]), float(r["sent_at"]))
            )
    return out


@dataclass
class FleetStats:
    messages: int = 0
    windows: int = 0
    anomalies: int = 0
    acked: int = 0  # messages the broker acknowledged (QoS 1) or that were written (QoS 0)
    started: float = 0.0
    finished: float = 0.0

    @property
    def elapsed(self) -> float:
        return max((self.finished or time.monotonic()) - self.started, 1e-9)


@dataclass
class Fleet:
    """N devices on one MQTT connection, each sending windows at `rate` per second."""

    pool: BeatPool
    devices: int = 10
    rate: float = 1.0  # windows/s per device; <= 0: as fast as possible
    anomaly_fraction: float | None = SYNTHETIC_DEFAULT_FRACTION
    fmt: Format = "json"
    windows_per_message: int = 1
    qos: int = 1
    prefix: str = "ecg"
    device_prefix: str = "sim-"
    seed: int = 0
    on_sent: Callable[[list[SentWindow]], None] | None = None
    max_pending: int = 2000  # messages published but not yet acknowledged / written
    stats: FleetStats = field(default_factory=FleetStats)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise SimulateError("need at least one device")
        if not 1 <= self.windows_per_message <= 0xFFFF:
            raise SimulateError("windows per message must be 1..65535")
        self.device_ids = [f"{self.device_prefix}{i:04d}" for i in range(self.devices)]
        for d in self.device_ids:
            if not wire.DEVICE_ID_RE.match(d):
                raise SimulateError(f"device id {d!r} is not 1-64 of [A-Za-z0-9_.-]")
        self.topics = [f"{self.prefix}/{d}/window" for d in self.device_ids]
        self.picker = Picker(self.pool, self.devices, self.anomaly_fraction, self.seed)
        self._rng = np.random.default_rng(self.seed + 2)
        self._lock = threading.Lock()

    def payload(self, seq: int, ts: float, idx: list[int]) -> bytes:
        """The message for windows `idx` of the pool; equal to wire.encode_json/encode_binary."""
        if self.fmt == "binary":
            header = wire.HEADER.pack(
                wire.MAGIC, wire.VERSION, len(idx), self.pool.length, seq, ts, 0.0
            )
            return header + b"".join(self.pool.bin_rows[i] for i in idx)
        rows = self.pool.json_rows
        if len(idx) == 1:
            return f'{{"seq":{seq},"ts":{ts!r},"samples":{rows[idx[0]]}}}'.encode()
        body = ",".join(rows[i] for i in idx)
        return f'{{"seq":{seq},"ts":{ts!r},"windows":[{body}]}}'.encode()

    def _on_publish(self, _c: mqtt.Client, _u: object, _mid: int, _rc: object, _p: object) -> None:
        with self._lock:
            self.stats.acked += 1

    def run(
        self,
        client: mqtt.Client,
        *,
        duration: float | None = None,
        count: int | None = None,
        progress: Callable[[FleetStats], None] | None = None,
    ) -> FleetStats:
        """Publish until `duration` s passed, `count` windows per device were sent, or stop()."""
        client.on_publish = self._on_publish
        k = self.windows_per_message
        interval = k / self.rate if self.rate > 0 else 0.0
        now = time.monotonic()
        self.stats.started = now
        end = now + duration if duration is not None else float("inf")
        seqs = [0] * self.devices
        # Random phase so that devices do not all beat at once.
        heap = [(now + self._rng.uniform(0, interval), i) for i in range(self.devices)]
        heapq.heapify(heap)
        next_progress = now + 1.0
        while heap and not self.stop_event.is_set():
            due, dev = heap[0]
            now = time.monotonic()
            if now >= end:
                break
            if due > now:
                self.stop_event.wait(min(due, end) - now)
                continue
            if self.stats.messages - self.stats.acked >= self.max_pending:
                self.stop_event.wait(0.002)  # the broker is behind: bounded memory, not a queue
                continue
            heapq.heappop(heap)
            n = k if count is None else min(k, count - seqs[dev])
            seq = seqs[dev]
            idx = self.picker.take(dev, n)
            ts = time.time()
            sent = [
                SentWindow(self.device_ids[dev], seq + i, int(self.pool.y[j]), ts)
                for i, j in enumerate(idx)
            ]
            if self.on_sent is not None:
                self.on_sent(sent)  # before publishing: an alert may come back at once
            client.publish(self.topics[dev], self.payload(seq, ts, idx), qos=self.qos)
            seqs[dev] = seq + n
            self.stats.messages += 1
            self.stats.windows += n
            self.stats.anomalies += sum(w.is_anomaly for w in sent)
            if count is None or seqs[dev] < count:
                jitter = min(max(self._rng.normal(1.0, JITTER), 0.5), 1.5)
                heapq.heappush(heap, (max(due + interval * jitter, now - 1.0), dev))
            if progress is not None and now >= next_progress:
                progress(self.stats)
                next_progress = now + 1.0
        self.stats.finished = time.monotonic()
        return self.stats

    def wait_acked(self, timeout: float) -> bool:
        """Wait until every message is acknowledged (QoS 1) or written (QoS 0)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_event.is_set():
            with self._lock:
                if self.stats.acked >= self.stats.messages:
                    return True
            time.sleep(0.02)
        return self.stats.acked >= self.stats.messages

    def stop(self) -> None:
        self.stop_event.set()


def _stream_sim() -> Any:
    """monitor.stream_sim, imported when used: the front end brings scipy (slow to import)."""
    return importlib.import_module("monitor.stream_sim")


def configure(parser: argparse.ArgumentParser) -> None:
    add_client_options(parser)
    parser.add_argument(
        "--mode",
        choices=["window", "stream"],
        default="window",
        help="window: cut heartbeat windows; stream: continuous ECG chunks (stream_sim)",
    )
    parser.add_argument("--devices", type=int, default=10, help="number of devices")
    parser.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="windows/s per device, with beat-to-beat jitter; 0 = as fast as possible",
    )
    parser.add_argument(
        "--anomaly-fraction",
        type=float,
        default=None,
        help=f"share of anomalous windows (default {SYNTHETIC_DEFAULT_FRACTION} for synthetic; "
        "a ucr source without it replays the file in order with its own mix)",
    )
    parser.add_argument(
        "--source",
        default="synthetic",
        help="synthetic[:N] (N beats made up front) or ucr:PATH (replay a UCR file, with labels)",
    )
    parser.add_argument(
        "--format",
        choices=["json", "binary", "f32", "i16"],
        default=None,
        help="payload format: json or binary (ECGW) for windows; f32 or binary (ECGS float32), "
        "i16 (ECGS int16 + gain) or json for streams (default json / f32)",
    )
    parser.add_argument(
        "--windows-per-message", type=int, default=1, metavar="K", help="windows per message"
    )
    parser.add_argument("--qos", type=int, choices=[0, 1], default=1, help="publish QoS")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: run until Ctrl-C)"
    )
    stop.add_argument("--count", type=int, help="stop after this many windows per device")
    parser.add_argument("--prefix", default="ecg", help="topic prefix")
    parser.add_argument(
        "--device-prefix", default="sim-", help="device ids are PREFIX0000, PREFIX0001, ..."
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (beats, choices, jitter)")
    parser.add_argument(
        "--ground-truth",
        type=Path,
        metavar="FILE",
        help="write device_id,seq,label,is_anomaly,sent_at (CSV; JSON lines for .jsonl)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    configure_stream(parser)


def configure_stream(parser: argparse.ArgumentParser) -> None:
    """Options of `simulate --mode stream` (monitor.stream_sim), beside the window fleet's."""
    g = parser.add_argument_group("stream mode (--mode stream)")
    g.add_argument("--records", help="mitdb records to replay, comma separated (100,101,...)")
    g.add_argument(
        "--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible"
    )
    g.add_argument("--chunk-s", type=float, default=1.0, help="seconds of signal per chunk")
    g.add_argument("--record-s", type=float, default=300.0, help="synthetic recording length (s)")
    g.add_argument("--fs", type=float, default=360.0, help="synthetic sampling rate (Hz)")
    g.add_argument("--artefacts", type=int, default=2, help="noise bursts per synthetic record")
    g.add_argument(
        "--lead-off", type=int, default=1, help="lead-off stretches per synthetic record"
    )
    g.add_argument("--gain", type=float, default=200.0, help="ADC units per mV (--format i16)")
    g.add_argument("--loop", action="store_true", help="replay recordings again and again")
    g.add_argument(
        "--wall-clock",
        action="store_true",
        help="device time of sample 0 = now (alert ts is then comparable with published_at)",
    )


def print_progress(stats: FleetStats) -> None:
    rate = stats.windows / stats.elapsed
    sys.stderr.write(
        f"simulate: {stats.windows:,} windows in {stats.messages:,} messages "
        f"({rate:,.0f} windows/s), {stats.anomalies:,} anomalous, {stats.acked:,} acknowledged\n"
    )
    sys.stderr.flush()


def main(args: argparse.Namespace) -> int:
    if args.mode == "stream":
        args.format = args.format or "f32"
        return int(_stream_sim().main(args))
    args.format = args.format or "json"
    if args.format not in ("json", "binary"):
        print("ecg-monitor simulate: windows are json or binary", file=sys.stderr)
        return 2
    try:
        pool = BeatPool.from_source(args.source, seed=args.seed)
        fraction = args.anomaly_fraction
        if fraction is None and args.source.startswith("synthetic"):
            fraction = SYNTHETIC_DEFAULT_FRACTION
        truth = GroundTruthWriter(args.ground_truth) if args.ground_truth else None
        fleet = Fleet(
            pool,
            devices=args.devices,
            rate=args.rate,
            anomaly_fraction=fraction,
            fmt=args.format,
            windows_per_message=args.windows_per_message,
            qos=args.qos,
            prefix=args.prefix,
            device_prefix=args.device_prefix,
            seed=args.seed,
            on_sent=truth.write if truth else None,
        )
        client = connect(
            ClientOptions.from_args(args), f"{args.device_prefix}fleet-{time.time_ns() % 10**9}"
        )
    except MonitorError as e:
        print(f"ecg-monitor simulate: {e}", file=sys.stderr)
        return 2
    try:
        fleet.run(
            client,
            duration=args.duration,
            count=args.count,
            progress=None if args.quiet else print_progress,
        )
    except KeyboardInterrupt:
        fleet.stats.finished = time.monotonic()
    finally:
        acked = fleet.wait_acked(30.0)
        fleet.stats.finished = time.monotonic()  # the final rate counts until the last ack
        client.disconnect()
        client.loop_stop()
        if truth is not None:
            truth.close()
    if not args.quiet:
        print_progress(fleet.stats)
    if not acked:
        print(
            f"ecg-monitor simulate: only {fleet.stats.acked} of {fleet.stats.messages} "
            "messages acknowledged",
            file=sys.stderr,
        )
        return 1
    return 0
