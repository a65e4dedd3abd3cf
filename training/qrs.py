"""`ecg-train qrs`: the front end's R-peak detector alone on WFDB records, matched to the
reference beats like EC57 (one-to-one within 150 ms and 50 ms), with its time per hour."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.frontend.match import BEAT_SYMBOLS, match_beats
from monitor.frontend.qrs import detect_r_peaks
from monitor.frontend.wfdb_io import read_annotations, read_record
from training.errors import TrainingError

DS1 = tuple(
    [
        "101",
        "106",
        "108",
        "109",
        "112",
        "114",
        "115",
        "116",
        "118",
        "119",
        "122",
        "124",
        "201",
        "203",
        "205",
        "207",
        "208",
        "209",
        "215",
        "220",
        "223",
        "230",
    ]
)
DS2 = tuple(
    [
        "100",
        "103",
        "105",
        "111",
        "113",
        "117",
        "121",
        "123",
        "200",
        "202",
        "210",
        "212",
        "213",
        "214",
        "219",
        "221",
        "222",
        "228",
        "231",
        "232",
        "233",
        "234",
    ]
)
TOLERANCES_MS = (150, 50)
Detector = Callable[[np.ndarray, float], np.ndarray]


def parse_records(spec: str, data_dir: Path) -> list[str]:
    """`DS1`, `DS2`, `all` (every record with an .atr in DIR) or a comma list."""
    named = {"DS1": DS1, "DS2": DS2}
    if spec in named:
        return list(named[spec])
    if spec == "all":
        return sorted(p.stem for p in data_dir.glob("*.atr"))
    return [r.strip() for r in spec.split(",") if r.strip()]


@dataclass
class RecordResult:
    record: str
    n_ref: int
    n_det: int
    seconds: float  # signal duration
    cpu_s: float  # detector time
    tp: dict[int, int]
    errors_ms: np.ndarray  # timing error of matched beats at 150 ms (det - ref)
    in_vf: int  # detections inside ventricular flutter/fibrillation episodes ([ ... ])

    def row(self) -> dict[str, object]:
        d: dict[str, object] = {"record": self.record, "n_ref": self.n_ref, "n_det": self.n_det}
        for tol, tp in self.tp.items():
            d[f"se_{tol}ms"] = tp / max(self.n_ref, 1)
            d[f"ppv_{tol}ms"] = tp / max(self.n_det, 1)
        d["median_abs_error_ms"] = (
            float(np.median(np.abs(self.errors_ms))) if self.errors_ms.size else None
        )
        d["detections_in_vf"] = self.in_vf
        return d


def load(
    data_dir: Path, record: str, lead: str
) -> tuple[np.ndarray, float, np.ndarray, list[tuple[int, int]]]:
    """Signal (mV) of `lead`, fs, reference beat samples and the VF/VFL episodes."""
    rec = read_record(data_dir / record)
    ann = read_annotations(data_dir / record)
    ref = ann.sample[np.array([s in BEAT_SYMBOLS for s in ann.symbol], dtype=bool)]
    on = [int(s) for s, y in zip(ann.sample, ann.symbol, strict=True) if y == "["]
    off = [int(s) for s, y in zip(ann.sample, ann.symbol, strict=True) if y == "]"]
    return rec.lead(lead), rec.fs, ref, list(zip(on, off, strict=False))


def run_record(
    data_dir: Path, record: str, detector: Detector = detect_r_peaks, lead: str = "MLII"
) -> RecordResult:
    x, fs, ref, vf = load(data_dir, record, lead)
    t = time.process_time()
    det = np.sort(np.asarray(detector(x, fs), dtype=np.int64))
    cpu = time.process_time() - t
    tp = {}
    errors = np.zeros(0)
    for tol in TOLERANCES_MS:
        m = match_beats(ref, det, round(tol * fs / 1000))
        tp[tol] = m.tp
        if tol == 150:
            errors = (det[m.det_idx] - ref[m.ref_idx]) / fs * 1000.0
    in_vf = sum(int(((det >= a) & (det <= b)).sum()) for a, b in vf)
    return RecordResult(record, int(ref.size), int(det.size), x.size / fs, cpu, tp, errors, in_vf)


def summary(results: Sequence[RecordResult]) -> dict[str, object]:
    n_ref = sum(r.n_ref for r in results)
    n_det = sum(r.n_det for r in results)
    in_vf = sum(r.in_vf for r in results)
    out: dict[str, object] = {"records": len(results), "n_ref": n_ref, "n_det": n_det}
    for tol in TOLERANCES_MS:
        tp = sum(r.tp[tol] for r in results)
        out[f"se_{tol}ms"] = tp / max(n_ref, 1)
        out[f"ppv_{tol}ms"] = tp / max(n_det, 1)
        # EC57/bxb practice: detections inside VF/VFL episodes are not compared.
        out[f"ppv_{tol}ms_vf_excluded"] = tp / max(n_det - in_vf, 1)
    err = np.concatenate([r.errors_ms for r in results]) if results else np.zeros(0)
    out["median_error_ms"] = float(np.median(err)) if err.size else None
    out["median_abs_error_ms"] = float(np.median(np.abs(err))) if err.size else None
    hours = sum(r.seconds for r in results) / 3600.0
    out["cpu_s_per_hour"] = sum(r.cpu_s for r in results) / max(hours, 1e-9)
    out["detections_in_vf"] = in_vf
    return out


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="mitdb:DIR (WFDB records with .atr)")
    p.add_argument("--records", default="DS1", help="DS1, DS2, all or a comma list")
    p.add_argument("--lead", default="MLII", help="lead by its header name")
    p.add_argument("--json", type=Path, help="write per-record and gross results here")


def main(args: argparse.Namespace) -> int:
    spec = str(args.data)
    if not spec.startswith("mitdb:"):
        raise TrainingError("ecg-train qrs needs --data mitdb:DIR")
    data_dir = Path(spec.split(":", 1)[1])
    records = parse_records(args.records, data_dir)
    results = [run_record(data_dir, r, lead=args.lead) for r in records]
    total = summary(results)
    print("| record | beats | Se 150 | +P 150 | Se 50 | +P 50 | median abs error ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        d = r.row()
        print(
            f"| {r.record} | {r.n_ref} | {100 * float(d['se_150ms']):.2f} | "  # type: ignore[arg-type]
            f"{100 * float(d['ppv_150ms']):.2f} | {100 * float(d['se_50ms']):.2f} | "  # type: ignore[arg-type]
            f"{100 * float(d['ppv_50ms']):.2f} | {d['median_abs_error_ms']} |"  # type: ignore[arg-type]
        )
    print(json.dumps(total, indent=2))
    if args.json:
        args.json.write_text(
            json.dumps({"gross": total, "records": [r.row() for r in results]}, indent=2)
        )
    return 0
