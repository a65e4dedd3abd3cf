"""Scoring: a window is anomalous when the model's score exceeds the threshold.

A window whose score is not finite (NaN or inf: the model's arithmetic overflowed on it) is
never anomalous and never "normal": `finite` is False and the daemon rejects it as
`out_of_range` with its payload.

`peak_index` is where the window deviates most from its reconstruction (argmax of the
absolute error over what the model compared, i.e. after any preprocessing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitor.engine import Inference


@dataclass(frozen=True, slots=True)
class Scores:
    """Per-window results of one batch, all arrays of length n."""

    score: np.ndarray  # float32
    anomalous: np.ndarray  # bool: finite and over the threshold
    finite: np.ndarray  # bool
    peak_index: np.ndarray  # int64
    threshold: float


def score_batch(inference: Inference, threshold: float) -> Scores:
    """Vectorised: one comparison and one argmax over the whole batch."""
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
    )
