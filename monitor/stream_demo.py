"""`ecg-monitor demo --mode stream`: the whole system on continuous ECG, ending with a beat-level
summary: beats detected against the simulator's truth (matched within 150 ms), alerts by
class, false alarms per hour of signal, and latency from R peak to alert.

The broker and daemon start-up are the window demo's (`monitor.demo.Demo`); the daemon serves
streams with a stream model (`ecg.segmentation`), the fleet is `monitor.stream_sim`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from monitor.broker import ClientOptions
from monitor.demo import DEFAULT_MODEL, Demo, _quantile, broker_description, run_demo
from monitor.frontend.match import match_beats
from monitor.stream_sim import StreamFleet, TruthWriter, load_source

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_STREAM_MODEL = MODELS_DIR / "stream-synthetic-dense.onnx"  # for the synthetic fleet
MITDB_STREAM_MODEL = MODELS_DIR / "mitdb-ds1-dense.onnx"  # for mitdb: replay of real records
TOLERANCE_S = 0.150  # beat matching tolerance, as the field reports it
STREAM_SECTION = """
[streams]
enabled = true
windows = false
idle_forget_s = 3.0
"""


@dataclass
class BeatTally:
    """Truth beats as sent, and what the daemon scored and alerted, per device."""

    truth: dict[str, list[tuple[int, str, bool, float]]] = field(default_factory=dict)
    scored: dict[str, set[int]] = field(default_factory=dict)
    alerts: dict[str, dict[int, float]] = field(default_factory=dict)  # seq -> published_at
    fs: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, rows: list[tuple[str, int, str, bool, float, float]]) -> None:
        with self.lock:
            for d, r, label, anomaly, _ts, wall in rows:
                self.truth.setdefault(d, []).append((r, label, anomaly, wall))


@dataclass
class StreamSummary:
    broker: str
    model: str
    duration_s: float
    devices: int
    signal_hours: float
    truth_beats: int
    detected_beats: int
    sensitivity: float
    positive_predictivity: float
    alerts: int
    alerts_by_class: dict[str, int]
    anomalous_beats: int
    anomalous_alerted: int
    false_alarms: int
    false_alarms_per_hour: float
    latency_p50_s: float
    latency_p99_s: float
    interrupted: bool

    @classmethod
    def of(
        cls,
        t: BeatTally,
        *,
        broker: str,
        model: str,
        duration: float,
        devices: int,
        interrupted: bool,
    ) -> StreamSummary:
        n_truth = n_det = tp = 0
        by_class: Counter[str] = Counter()
        anomalous = anomalous_alerted = false_alarms = 0
        latencies: list[float] = []
        hours = 0.0
        for dev, beats in t.truth.items():
            fs = t.fs.get(dev, 360.0)
            ref = np.array(sorted(b[0] for b in beats), dtype=np.int64)
            labels = {r: (label, anomaly, wall) for r, label, anomaly, wall in beats}
            det = np.array(sorted(t.scored.get(dev, set())), dtype=np.int64)
            if ref.size:
                hours += (ref[-1] - ref[0]) / fs / 3600
            m = match_beats(ref, det, round(TOLERANCE_S * fs))
            n_truth += m.n_ref
            n_det += m.n_det
            tp += m.tp
            det_to_ref = dict(zip(det[m.det_idx].tolist(), ref[m.ref_idx].tolist(), strict=True))
            anomalous += sum(1 for b in beats if b[2])
            for seq, published_at in t.alerts.get(dev, {}).items():
                r = det_to_ref.get(seq)
                label, is_anomaly, wall = labels[r] if r is not None else ("no beat", False, 0.0)
                if r is not None:  # from the wall time the R peak was sent for
                    latencies.append(published_at - wall)
                by_class[label] += 1
                if is_anomaly:
                    anomalous_alerted += 1
                else:
                    false_alarms += 1
        lat = sorted(latencies)
        return cls(
            broker=broker,
            model=model,
            duration_s=round(duration, 2),
            devices=devices,
            signal_hours=round(hours, 4),
            truth_beats=n_truth,
            detected_beats=n_det,
            sensitivity=tp / n_truth if n_truth else math.nan,
            positive_predictivity=tp / n_det if n_det else math.nan,
            alerts=sum(by_class.values()),
            alerts_by_class=dict(sorted(by_class.items())),
            anomalous_beats=anomalous,
            anomalous_alerted=anomalous_alerted,
            false_alarms=false_alarms,
            false_alarms_per_hour=false_alarms / hours if hours else math.nan,
            latency_p50_s=_quantile(lat, 0.5),
            latency_p99_s=_quantile(lat, 0.99),
            interrupted=interrupted,
        )

    def render(self) -> str:
        def num(v: float, fmt: str) -> str:
            return "n/a" if math.isnan(v) else format(v, fmt)

        title = "ecg-monitor demo summary (streams)" + (
            " (interrupted)" if self.interrupted else ""
        )
        classes = ", ".join(f"{k} {v:,}" for k, v in self.alerts_by_class.items()) or "none"
        rows = [
            ("broker", self.broker),
            ("model", self.model),
            (
                "ran for",
                f"{self.duration_s:.1f} s, {self.devices} devices, "
                f"{self.signal_hours * 60:.1f} min of signal",
            ),
            (
                "beats",
                f"{self.truth_beats:,} in the signal, {self.detected_beats:,} found and "
                f"scored (Se {num(self.sensitivity, '.3f')}, "
                f"+P {num(self.positive_predictivity, '.3f')}, 150 ms)",
            ),
            ("alerts", f"{self.alerts:,}: {classes}"),
            (
                "anomalous",
                f"{self.anomalous_alerted:,} of {self.anomalous_beats:,} anomalous beats alerted",
            ),
            (
                "false alarms",
                f"{self.false_alarms:,} ({num(self.false_alarms_per_hour, ',.1f')} "
                "per hour of signal)",
            ),
            (
                "latency",
                f"p50 {num(self.latency_p50_s, '.2f')} s, p99 "
                f"{num(self.latency_p99_s, '.2f')} s (R peak -> alert published)",
            ),
        ]
        return "\n".join([title, *(f"  {k:<15} {v}" for k, v in rows)])


class StreamDemo(Demo):
    """The window demo's broker and daemon, with streams on and a continuous-ECG fleet."""

    config_extra = STREAM_SECTION

    def __init__(self, args: argparse.Namespace, interrupted: threading.Event) -> None:
        super().__init__(args, interrupted)
        self.beats = BeatTally()
        self.stream_fleet: StreamFleet | None = None
        self.truth_writer: TruthWriter | None = None

    def start_fleet(self, opts: ClientOptions) -> None:
        a = self.args
        recordings = load_source(
            a.source,
            devices=a.devices,
            records=a.records.split(",") if a.records else None,
            seconds=a.duration * max(a.speed, 1.0) + 5,
            fs=360.0,
            seed=a.seed,
            anomaly_rate=a.anomaly_fraction,
            artefacts=1,
            lead_off=1 if a.duration >= 40 else 0,
        )
        for i, rec in enumerate(recordings):
            self.beats.fs[f"sim-{i:04d}"] = rec.fs
        if a.ground_truth is not None:
            self.truth_writer = TruthWriter(a.ground_truth)
        writer = self.truth_writer

        def on_truth(rows: list[tuple[str, int, str, bool, float, float]]) -> None:
            self.beats.sent(rows)
            if writer is not None:
                writer.write(rows)

        self.stream_fleet = StreamFleet(
            recordings,
            chunk_s=1.0,
            speed=a.speed,
            prefix=a.prefix,
            wall_clock=True,
            on_truth=on_truth,
        )
        fleet = self.stream_fleet
        self.run_fleet(
            opts,
            f"ecg-demo-streams-{time.time_ns() % 10**9}",
            lambda c: fleet.run(c, duration=a.duration),
        )
        self.say(
            f"fleet       {a.devices} devices streaming 360 Hz ECG in 1 s chunks at "
            f"{a.speed:g}x real time, for {a.duration:g} s (Ctrl-C stops)"
        )

    def watch(self) -> None:
        """Show beat alerts until the fleet is done and the daemon's idle flush has come."""
        assert self.sub is not None and self.fleet_thread is not None
        quiet_until: float | None = None
        while True:
            self.check()
            if self.daemon is not None and self.daemon.poll() is not None:
                raise self.daemon_died()
            event = self.sub.get(0.2)
            now = time.monotonic()
            if event is not None:
                p = event.payload
                dev = event.device_id
                if event.kind == "score" and p.get("source") == "stream":
                    self.beats.scored.setdefault(dev, set()).update(p.get("seqs", []))
                elif event.kind == "alert" and p.get("source") == "stream":
                    self.beats.alerts.setdefault(dev, {})[int(p["seq"])] = float(p["published_at"])
                    if self.args.live:
                        print(
                            f"{time.strftime('%H:%M:%S')}  {dev:<10} beat @{p['seq']:>8}  "
                            f"score {p['score']:8.2f} > {p['threshold']:.2f}  "
                            f"HR {p.get('hr_bpm') or 0:5.1f}  p {p.get('p_value') or 0:.3f}",
                            flush=True,
                        )
            if self.fleet_thread.is_alive():
                continue
            if quiet_until is None or event is not None:
                quiet_until = now + 6.0  # the daemon flushes idle devices after 3 s
            if now > quiet_until:
                return

    def close(self) -> None:
        if self.stream_fleet is not None:
            self.stream_fleet.stop_event.set()
        super().close()
        if self.truth_writer is not None:
            self.truth_writer.close()


def main(args: argparse.Namespace) -> int:
    if args.model != DEFAULT_MODEL:
        model = args.model.resolve()
    elif str(args.source).startswith("mitdb:"):
        model = MITDB_STREAM_MODEL.resolve()  # real records: the model trained on MIT-BIH DS1
    else:
        model = DEFAULT_STREAM_MODEL.resolve()
    if not model.is_file():
        print(f"ecg-monitor demo: no stream model at {model}", file=sys.stderr)
        return 2
    demo, code, ran = run_demo(StreamDemo, args, model)
    if demo.stream_fleet is None:
        return code
    broker = broker_description(demo, args)
    summary = StreamSummary.of(
        demo.beats,
        broker=broker,
        model=model.name,
        duration=ran,
        devices=args.devices,
        interrupted=code == 130,
    )
    print(summary.render(), file=sys.stderr, flush=True)  # stdout: the alert lines only
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return code
