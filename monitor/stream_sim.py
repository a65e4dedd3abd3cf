"""`ecg-monitor simulate --mode stream`: devices publishing continuous ECG chunks.

Each device plays one recording: a synthetic one (monitor.frontend.synthetic: heart-rate
variability, labelled anomalous beats, noise bursts, lead-off) or a WFDB record
(`mitdb:DIR` with `--records`, read by monitor.frontend.wfdb_io; beats labelled by AAMI class
from its annotations). Chunks are paced in real time (`--speed` > 1 faster, 0 as fast as
possible). Ground truth is one row per beat: device_id, r_index, label, is_anomaly, ts
(device time of the R peak) and r_wall (the wall time that sample was sent for, so
R peak -> alert latency = alert published_at - r_wall).
"""

from __future__ import annotations

import argparse
import csv
import heapq
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import paho.mqtt.client as mqtt

from monitor.broker import ClientOptions, connect
from monitor.errors import DataError, MonitorError
from monitor.frontend.synthetic import synthetic_stream
from monitor.frontend.wfdb_io import read_annotations, read_record
from monitor.stream_wire import SampleFormat, encode_stream_binary, encode_stream_json

# AAMI classes of MIT-BIH beat symbols; N is normal, Q unclassifiable.
AAMI = {
    **dict.fromkeys("NLRej", "N"),
    **dict.fromkeys("aAJS", "S"),
    **dict.fromkeys("VE", "V"),
    "F": "F",
    **dict.fromkeys("/fQ", "Q"),
}
T0_DEVICE = 1_764_000_000.0  # device time of sample 0 of every simulated recording


@dataclass(frozen=True)
class Recording:
    """One lead of one recording with its beats (R sample, label)."""

    name: str
    fs: float
    signal_mv: np.ndarray  # float32
    r_peaks: np.ndarray  # int64
    labels: tuple[str, ...]  # "normal" or the anomaly kind / AAMI class

    def is_anomaly(self, i: int) -> bool:
        return self.labels[i] not in ("normal", "N")


def synthetic_recordings(
    devices: int,
    *,
    seconds: float,
    fs: float,
    seed: int,
    anomaly_rate: float,
    artefacts: int,
    lead_off: int,
) -> list[Recording]:
    out = []
    for i in range(devices):
        s = synthetic_stream(
            seconds,
            fs,
            seed=seed + i,
            anomaly_rate=anomaly_rate,
            artefacts=artefacts,
            lead_off=lead_off,
        )
        out.append(
            Recording(
                f"synthetic-{seed + i}",
                s.fs,
                s.signal_mv.astype(np.float32),
                s.r_peaks.astype(np.int64),
                tuple(s.kind_names()),
            )
        )
    return out


def wfdb_recordings(directory: Path, records: list[str]) -> list[Recording]:
    """Lead MLII (or the first) of each record, beats from its .atr annotations (AAMI class)."""
    out = []
    for name in records:
        base = directory / name
        if not base.with_suffix(".hea").is_file():
            raise DataError(f"mitdb:{directory}", f"no record {name} (.hea missing)")
        rec = read_record(base)
        lead = rec.lead("MLII") if "MLII" in rec.sig_names else rec.signals_mv[:, 0]
        ann = read_annotations(base)
        keep = [i for i, s in enumerate(ann.symbol) if s in AAMI]
        out.append(
            Recording(
                name,
                rec.fs,
                np.asarray(lead, np.float32),
                ann.sample[keep].astype(np.int64),
                tuple(AAMI[ann.symbol[i]] for i in keep),
            )
        )
    return out


def load_source(
    source: str,
    *,
    devices: int,
    records: list[str] | None,
    seconds: float,
    fs: float,
    seed: int,
    anomaly_rate: float,
    artefacts: int,
    lead_off: int,
) -> list[Recording]:
    """One recording per device: synthetic, or the records replayed round robin."""
    if source == "synthetic":
        return synthetic_recordings(
            devices,
            seconds=seconds,
            fs=fs,
            seed=seed,
            anomaly_rate=anomaly_rate,
            artefacts=artefacts,
            lead_off=lead_off,
        )
    if source.startswith("mitdb:"):
        directory = Path(source[len("mitdb:") :]).expanduser()
        if not records:
            raise DataError(source, "--records is required with mitdb:DIR")
        recs = wfdb_recordings(directory, records)
        return [recs[i % len(recs)] for i in range(devices)]
    raise DataError(source, "stream sources are synthetic or mitdb:DIR")


class TruthWriter:
    """Ground truth per beat, as CSV."""

    FIELDS = ("device_id", "r_index", "label", "is_anomaly", "ts", "r_wall")

    def __init__(self, path: Path) -> None:
        self._f: IO[str] = path.open("w", newline="")
        self._w = csv.writer(self._f)
        self._w.writerow(self.FIELDS)
        self._lock = threading.Lock()

    def write(self, rows: list[tuple[str, int, str, bool, float, float]]) -> None:
        with self._lock:
            for d, r, label, anomaly, ts, wall in rows:
                self._w.writerow((d, r, label, int(anomaly), repr(ts), repr(wall)))

    def close(self) -> None:
        self._f.close()


def read_truth(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@dataclass
class StreamFleet:
    """Devices on one MQTT connection, each playing its recording in chunks."""

    recordings: list[Recording]
    chunk_s: float = 1.0
    speed: float = 1.0  # 1 = real time, 0 = as fast as the broker takes it
    fmt: SampleFormat | str = "f32"  # "f32", "i16" or "json"
    gain: float = 200.0  # ADC units per mV for i16
    qos: int = 1
    prefix: str = "ecg"
    device_prefix: str = "sim-"
    loop: bool = False
    wall_clock: bool = False  # device time 0 = the wall time the run starts (latency benches)
    on_truth: Callable[[list[tuple[str, int, str, bool, float, float]]], None] | None = None
    max_pending: int = 5000
    chunks: int = 0
    beats: int = 0
    acked: int = 0
    stop_event: threading.Event = field(default_factory=threading.Event)
    t0: float = T0_DEVICE

    def __post_init__(self) -> None:
        if not self.recordings:
            raise MonitorError("need at least one device")
        if self.fmt not in ("f32", "i16", "json"):
            raise MonitorError(f"stream format {self.fmt!r} is not f32, i16 or json")
        self.device_ids = [f"{self.device_prefix}{i:04d}" for i in range(len(self.recordings))]
        self._lock = threading.Lock()

    def _on_publish(self, *_a: object) -> None:
        with self._lock:
            self.acked += 1

    def run(self, client: mqtt.Client, duration: float | None = None) -> None:
        """Publish until every recording is sent (or `duration` s, or stop())."""
        client.on_publish = self._on_publish
        self.t0 = time.time() if self.wall_clock else T0_DEVICE
        m0 = time.monotonic()
        end = m0 + duration if duration is not None else float("inf")
        rng = np.random.default_rng(0)
        sizes = [max(1, round(self.chunk_s * r.fs)) for r in self.recordings]
        pos = [0] * len(self.recordings)
        laps = [0] * len(self.recordings)
        pace = self.chunk_s / self.speed if self.speed > 0 else 0.0
        phase = [float(rng.uniform(0, pace)) for _ in self.recordings]
        # each device starts recording at its own phase: sample 0 is at t0 + phase
        self._phase = phase if self.wall_clock else [0.0] * len(phase)
        heap = [(m0 + phase[i] + pace, i) for i in range(len(self.recordings))]
        heapq.heapify(heap)
        while heap and not self.stop_event.is_set():
            due, i = heap[0]
            now = time.monotonic()
            if now >= end:
                break
            if due > now:
                self.stop_event.wait(min(due, end) - now)
                continue
            if self.chunks - self.acked >= self.max_pending:
                self.stop_event.wait(0.002)
                continue
            heapq.heappop(heap)
            rec, dev, n = self.recordings[i], self.device_ids[i], sizes[i]
            start = pos[i]
            k = min(n, rec.signal_mv.size - start)
            offset = laps[i] * rec.signal_mv.size
            payload = self._lapped(rec, start, k, offset, self._phase[i])
            if self.on_truth is not None:
                lo, hi = np.searchsorted(rec.r_peaks, [start, start + k])
                wall_end = time.time()
                rate = rec.fs * (self.speed if self.speed > 0 else 1.0)
                rows = [
                    (
                        dev,
                        int(r) + offset,
                        rec.labels[j],
                        rec.is_anomaly(j),
                        self.t0 + self._phase[i] + (int(r) + offset) / rec.fs,
                        wall_end - (start + k - int(r)) / rate if self.speed > 0 else wall_end,
                    )
                    for j, r in zip(range(lo, hi), rec.r_peaks[lo:hi].tolist(), strict=True)
                ]
                self.beats += len(rows)
                if rows:
                    self.on_truth(rows)
            client.publish(f"{self.prefix}/{dev}/stream", payload, qos=self.qos)
            self.chunks += 1
            pos[i] = start + k
            if pos[i] >= rec.signal_mv.size:
                if not self.loop:
                    continue
                pos[i] = 0
                laps[i] += 1
            heapq.heappush(heap, (max(due + pace, now - 1.0), i))

    def _lapped(self, rec: Recording, start: int, k: int, offset: int, phase: float) -> bytes:
        """A chunk of the recording at stream index offset + start (loops continue the index)."""
        part = rec.signal_mv[start : start + k]
        s = offset + start
        ts = self.t0 + phase + s / rec.fs
        if self.fmt == "json":
            return encode_stream_json(s, ts, rec.fs, part)
        if self.fmt == "i16":
            return encode_stream_binary(s, ts, rec.fs, part, fmt="i16", gain=self.gain)
        return encode_stream_binary(s, ts, rec.fs, part)

    def wait_acked(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.acked >= self.chunks:
                    return True
            time.sleep(0.02)
        return self.acked >= self.chunks


def main(args: argparse.Namespace) -> int:
    fmt = {"binary": "f32"}.get(args.format, args.format)
    try:
        recordings = load_source(
            args.source,
            devices=args.devices,
            records=args.records.split(",") if args.records else None,
            seconds=args.record_s,
            fs=args.fs,
            seed=args.seed,
            anomaly_rate=0.05 if args.anomaly_fraction is None else args.anomaly_fraction,
            artefacts=args.artefacts,
            lead_off=args.lead_off,
        )
        truth = TruthWriter(args.ground_truth) if args.ground_truth else None
        fleet = StreamFleet(
            recordings,
            chunk_s=args.chunk_s,
            speed=args.speed,
            fmt=fmt,
            gain=args.gain,
            qos=args.qos,
            prefix=args.prefix,
            device_prefix=args.device_prefix,
            loop=args.loop,
            wall_clock=args.wall_clock,
            on_truth=truth.write if truth else None,
        )
        client = connect(
            ClientOptions.from_args(args), f"{args.device_prefix}streams-{time.time_ns() % 10**9}"
        )
    except MonitorError as e:
        print(f"ecg-monitor simulate: {e}", file=sys.stderr)
        return 2
    try:
        fleet.run(client, duration=args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        acked = fleet.wait_acked(30.0)
        client.disconnect()
        client.loop_stop()
        if truth is not None:
            truth.close()
    if not args.quiet:
        print(
            f"simulate: {fleet.chunks:,} chunks from {len(recordings)} devices, "
            f"{fleet.beats:,} beats, {fleet.acked:,} acknowledged",
            file=sys.stderr,
        )
    return 0 if acked else 1
