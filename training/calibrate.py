"""Alarm threshold from normal validation windows only: the (1 − fpr) quantile of their scores."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from training.errors import TrainingError

METHOD = "normal_quantile"


@dataclass(frozen=True)
class Calibration:
    """How the threshold was chosen: method, target false-alarm rate, threshold, sample size."""

    method: str
    fpr: float
    threshold: float
    n: int
    quantile: float

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        if self.n * self.fpr < 1.0:
            # With fewer than 1/fpr windows the quantile is simply the largest score seen.
            out["note"] = f"n={self.n} < 1/fpr: threshold is the maximum normal score"
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        return cls(
            method=str(data["method"]),
            fpr=float(data["fpr"]),
            threshold=float(data["threshold"]),
            n=int(data["n"]),
            quantile=float(data["quantile"]),
        )


def calibrate(normal_scores: np.ndarray, fpr: float = 0.01) -> Calibration:
    """Threshold = (1 − fpr) quantile of normal scores, rounded up to an observed score
    (so at most fpr of the calibration windows lie above it)."""
    if not 0.0 < fpr < 1.0:
        raise TrainingError(f"fpr must be in (0, 1), got {fpr}")
    scores = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise TrainingError("no normal scores to calibrate a threshold on")
    if not np.isfinite(scores).all():
        raise TrainingError("normal scores contain NaN or Inf")
    q = 1.0 - fpr
    threshold = float(np.quantile(scores, q, method="higher"))
    if not math.isfinite(threshold):
        raise TrainingError("calibrated threshold is not finite")
    return Calibration(METHOD, float(fpr), threshold, int(scores.size), q)
