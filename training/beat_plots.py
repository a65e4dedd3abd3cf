"""Plots for beat-level evaluation: a signal strip with detected beats and alerts coloured by
class, and score histograms per AAMI class (headless PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from training.mitdb import FALSE_DETECTION, RecordBeats
from training.plots import _save

CLASS_COLOURS = {
    "N": "tab:blue",
    "S": "tab:orange",
    "V": "tab:red",
    "F": "tab:purple",
    "Q": "tab:brown",
    FALSE_DETECTION: "black",
}
STRIP_S = 12.0


def _strip_start(r: RecordBeats, flags: np.ndarray) -> int:
    """Centre the strip on the first abnormal beat (else the first alert, else the start)."""
    abnormal = np.flatnonzero(np.isin(r.label, ("S", "V", "F")))
    pick = abnormal if abnormal.size else np.flatnonzero(flags)
    if pick.size == 0:
        return 0
    return max(0, int(r.r_index[pick[0]] - STRIP_S / 2 * r.fs))


def strip(r: RecordBeats, scores: np.ndarray, threshold: float, path: Path) -> Path:
    if r.signal_mv is None:
        raise ValueError("strip plots need the record's signal (keep_signal=True)")
    flags = scores > threshold
    a = _strip_start(r, flags)
    b = min(r.signal_mv.size, a + round(STRIP_S * r.fs))
    t = np.arange(a, b) / r.fs
    fig, ax = plt.subplots(figsize=(12, 3.2))
    ax.plot(t, r.signal_mv[a:b], color="0.35", lw=0.7)
    inside = (r.r_index >= a) & (r.r_index < b)
    for idx, lab, flag in zip(r.r_index[inside], r.label[inside], flags[inside], strict=True):
        y = r.signal_mv[idx]
        ax.plot(idx / r.fs, y, "o", ms=6, color=CLASS_COLOURS.get(lab, "gray"))
        ax.annotate(
            lab,
            (idx / r.fs, y),
            xytext=(0, 7),
            textcoords="offset points",
            ha="center",
            fontsize=8,
            color=CLASS_COLOURS.get(lab, "gray"),
        )
        if flag:
            ax.axvspan(idx / r.fs - 0.15, idx / r.fs + 0.15, color="tab:red", alpha=0.15)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mV")
    ax.set_title(
        f"record {r.record}: detected beats by reference class, alerts shaded "
        f"(threshold {threshold:.3g})"
    )
    fig.tight_layout()
    return _save(fig, path)


def histograms(
    records: list[RecordBeats], scores: dict[str, np.ndarray], threshold: float, path: Path
) -> Path:
    s = np.concatenate([scores[r.record] for r in records]).astype(np.float64)
    y = np.concatenate([r.label for r in records])
    lo = max(float(np.quantile(s, 0.001)), 1e-6)
    hi = max(float(s.max()), lo * 10)
    bins = np.geomspace(lo, hi, 60).tolist()
    fig, ax = plt.subplots(figsize=(8, 4))
    for c, colour in CLASS_COLOURS.items():
        m = y == c
        if m.any():
            ax.hist(
                np.clip(s[m], lo, hi),
                bins=bins,
                density=True,
                histtype="step",
                lw=1.5,
                color=colour,
                label=f"{c} ({int(m.sum())})",
            )
    ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold")
    ax.set_xscale("log")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.set_title("beat scores per AAMI class (- = false detection)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def draw(
    plots_dir: Path, records: list[RecordBeats], scores: dict[str, np.ndarray], threshold: float
) -> list[str]:
    """score_histogram.png, and strip_<record>.png for the record with most V and S beats."""
    written = [histograms(records, scores, threshold, plots_dir / "score_histogram.png")]
    nonempty = [r for r in records if len(r)]
    if nonempty:
        best = max(nonempty, key=lambda r: int(np.isin(r.label, ("S", "V")).sum()))
        written.append(
            strip(best, scores[best.record], threshold, plots_dir / f"strip_{best.record}.png")
        )
    return [str(p) for p in written]
