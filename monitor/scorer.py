"""Scoring: a window is anomalous when the model's score exceeds the threshold.

A window whose score is not finite (NaN or inf: the model's arithmetic overflowed on it) is
never anomalous and never "normal": `finite` is False and the daemon rejects it as
`out_of_range` with its payload.

`p_value` is the calibrated p-value of each score (monitor.calibration), None when the model
carries no calibration scores (a non-finite score gets p = 1). `peak_index` is where the
window deviates most from its reconstruction (argmax of the absolute error over what the
model compared, i.e. after any preprocessing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitor.calibration import PValues
from monitor.engine import Inference


@dataclass(frozen=True, slots=True)
class Scores:
    """Per-window results of one batch, all arrays of length n."""

    score: np.ndarray  # float32
    anomalous: np.ndarray  # bool: finite and over the threshold
    finite: np.ndarray  # bool
    peak_index: np.ndarray  # int64
    threshold: float
    p_value: np.ndarray | None = None  # float64, or None without calibration scores


def score_batch(inference: Inference, threshold: float, p_values: PValues | None = None) -> Scores:
    """Vectorised: one comparison, one argmax and one searchsorted over the whole batch."""
    score = inference.score
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(inference.inputs - inference.reconstruction)
    finite = np.isfinite(score)
    return Scores(
        score=score,
        anomalous=finite & (score > np.float32(threshold)),
        finite=finite,
        peak_index=np.argmax(err, axis=1),
        threshold=float(threshold),
        p_value=None if p_values is None else p_values.p_values(score),
    )
