"""Beat-level evaluation on continuous records (MIT-BIH, the synthetic stream): numpy only.

* QRS detection: Se = TP / (TP + FN), +P = TP / (TP + FP) with EC57-style one-to-one
  matching of every detected R peak to the reference beats within 150 ms (and 50 ms), and the
  timing error (detection − reference) of the matched pairs.
* Scores: ROC AUC for N against abnormal (S, V, F, Q), N against V, N against S, over the
  detected beats that matched a reference beat (false detections are counted apart).
* At the model's threshold: the false-alarm rate on N beats (flagged N / N), the
  sensitivity of V and S (flagged / all of the class) and their positive predictivity among
  the alerts on N and that class (+P_V = flagged V / (flagged V + flagged N)): the model
  raises one kind of alarm, not a class, so this is the share of its alarms on N-or-V beats
  that were right. Gross (pooled over all beats) and per record; `mean` is the mean of the
  per-record values over the records that have the class.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from monitor.frontend.match import match_beats
from training.metrics import recall_at_fpr, roc_auc
from training.mitdb import FALSE_DETECTION, RecordBeats

ABNORMAL = ("S", "V", "F", "Q")
TOLERANCES_MS = (150, 50)


def qrs_metrics(records: list[RecordBeats]) -> dict[str, Any]:
    """Gross and per-record Se / +P of the detector at 150 and 50 ms, timing errors in ms."""
    out: dict[str, Any] = {"per_record": {}}
    totals = {t: [0, 0, 0] for t in TOLERANCES_MS}
    errors: list[np.ndarray] = []
    for r in records:
        row: dict[str, Any] = {}
        for tol in TOLERANCES_MS:
            m = match_beats(r.ref_index, r.detections, round(tol / 1000 * r.fs))
            totals[tol][0] += m.tp
            totals[tol][1] += m.fn
            totals[tol][2] += m.fp
            row[f"se_{tol}ms"] = m.tp / max(1, m.tp + m.fn)
            row[f"ppv_{tol}ms"] = m.tp / max(1, m.tp + m.fp)
            if tol == TOLERANCES_MS[0]:
                err = (r.detections[m.det_idx] - r.ref_index[m.ref_idx]) / r.fs * 1000.0
                errors.append(err)
                row["median_abs_error_ms"] = float(np.median(np.abs(err))) if err.size else None
                row.update(tp=m.tp, fn=m.fn, fp=m.fp)
        out["per_record"][r.record] = row
    for tol, (tp, fn, fp) in totals.items():
        out[f"se_{tol}ms"] = tp / max(1, tp + fn)
        out[f"ppv_{tol}ms"] = tp / max(1, tp + fp)
        out[f"counts_{tol}ms"] = {"tp": tp, "fn": fn, "fp": fp}
    err = np.concatenate(errors) if errors else np.zeros(0)
    out["timing_ms"] = {
        "median_abs": float(np.median(np.abs(err))) if err.size else None,
        "mean": float(err.mean()) if err.size else None,
        "p95_abs": float(np.quantile(np.abs(err), 0.95)) if err.size else None,
    }
    return out


def _auc(scores: np.ndarray, labels: np.ndarray, positive: tuple[str, ...]) -> float | None:
    keep = (labels == "N") | np.isin(labels, positive)
    return roc_auc(scores[keep], np.isin(labels[keep], positive))


def _rates(flags: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    n = labels == "N"
    out: dict[str, Any] = {
        "n_beats": int(labels.size),
        "counts": {c: int((labels == c).sum()) for c in ("N", *ABNORMAL, FALSE_DETECTION)},
        "false_alarm_rate": float(flags[n].mean()) if n.any() else None,
        "false_alarms": int(flags[n].sum()),
        "false_detections_flagged": int(flags[labels == FALSE_DETECTION].sum()),
    }
    for c in ("V", "S"):
        cls = labels == c
        hit = int(flags[cls].sum())
        out[f"se_{c}"] = hit / int(cls.sum()) if cls.any() else None
        denom = hit + int(flags[n].sum())
        out[f"ppv_{c}"] = hit / denom if denom else None
    abn = np.isin(labels, ABNORMAL)
    out["se_abnormal"] = float(flags[abn].mean()) if abn.any() else None
    return out


def beat_metrics(
    records: list[RecordBeats],
    scores: dict[str, np.ndarray],
    thresholds: dict[str, float],
    fpr_goal: float = 0.01,
) -> dict[str, Any]:
    """Gross, per-record and mean-over-records detection metrics of per-beat SCORES."""
    per_record: dict[str, Any] = {}
    all_s, all_y, all_f = [], [], []
    for r in records:
        s = np.asarray(scores[r.record], dtype=np.float64)
        flags = s > thresholds[r.record]
        row = _rates(flags, r.label)
        row["threshold"] = float(thresholds[r.record])
        row["roc_auc_abnormal"] = _auc(s, r.label, ABNORMAL)
        row["roc_auc_V"] = _auc(s, r.label, ("V",))
        row["roc_auc_S"] = _auc(s, r.label, ("S",))
        per_record[r.record] = row
        all_s.append(s)
        all_y.append(r.label)
        all_f.append(flags)
    s, y, f = np.concatenate(all_s), np.concatenate(all_y), np.concatenate(all_f)
    gross = _rates(f, y)
    gross.update(
        roc_auc_abnormal=_auc(s, y, ABNORMAL),
        roc_auc_V=_auc(s, y, ("V",)),
        roc_auc_S=_auc(s, y, ("S",)),
    )
    for c in ("V", "S"):
        keep = (y == "N") | (y == c)
        gross[f"se_{c}_at_{fpr_goal:g}_fpr"] = recall_at_fpr(s[keep], y[keep] == c, fpr_goal)
    mean: dict[str, Any] = {}
    for key in ("roc_auc_abnormal", "roc_auc_V", "roc_auc_S", "false_alarm_rate", "se_V", "se_S"):
        vals = [row[key] for row in per_record.values() if row[key] is not None]
        mean[key] = float(np.mean(vals)) if vals else None
        mean[f"{key}_records"] = len(vals)
    return {"gross": gross, "mean_over_records": mean, "per_record": per_record}


def write_beats_csv(path: Path, records: list[RecordBeats], scores: dict[str, np.ndarray]) -> Path:
    """One row per detected beat: record, r_index, label (`-` = false detection), score
    (full float32 precision, as repr of the float)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["record", "r_index", "label", "score"])
        for r in records:
            for idx, lab, sc in zip(
                r.r_index.tolist(), r.label.tolist(), scores[r.record].tolist(), strict=True
            ):
                w.writerow([r.record, idx, lab, repr(float(sc))])
    return path


def read_beats_csv(path: Path) -> list[tuple[str, int, str, float]]:
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [(r["record"], int(r["r_index"]), r["label"], float(r["score"])) for r in rows]


def table(metrics: dict[str, Any]) -> str:
    """The per-record table as fixed-width text (for the console and BENCHMARKS.md)."""

    def fmt(v: Any, pct: bool = False) -> str:
        if v is None:
            return "—"
        return f"{100 * v:.1f}" if pct else f"{v:.3f}"

    lines = [
        "record   beats     N    S    V   F  FD  AUC(abn)  AUC(V)  AUC(S)  FA%N   SeV%   SeS%",
    ]
    rows = {**metrics["per_record"], "gross": metrics["gross"]}
    for name, row in rows.items():
        c = row["counts"]
        lines.append(
            f"{name:<8}{row['n_beats']:>6}{c['N']:>6}{c['S']:>5}{c['V']:>5}{c['F']:>4}"
            f"{c['-']:>4}  {fmt(row['roc_auc_abnormal']):>8}  {fmt(row['roc_auc_V']):>6}"
            f"  {fmt(row['roc_auc_S']):>6}  {fmt(row['false_alarm_rate'], True):>4}"
            f"  {fmt(row['se_V'], True):>5}  {fmt(row['se_S'], True):>5}"
        )
    return "\n".join(lines)
