"""Calibrated p-values for scores, from the calibration scores a model carries.

A model's `ecg.calibration` metadata (JSON) holds `"scores"`: the sorted scores of normal
calibration beats that no model saw when scoring them (the out-of-fold scores of
cross-conformal calibration, or a held-out split), and `"n"`, how many there were. A new
score s gets the conformal p-value

    p(s) = (1 + #{calibration scores ≥ s}) / (n + 1),

the share of calibration normals that score at least as high, counting the new beat itself.
For a normal beat exchangeable with the calibration beats, P(p ≤ α) ≤ α for every α (and
≥ α − 1/(n + 1)): alarming at p ≤ α is a false-alarm rate of at most α. With a very large
calibration set the model may store an evenly spaced quantile table (`"scores_kind":
"quantiles"`, m < n values) instead; the count is then interpolated as n · (share of the
table ≥ s), accurate to about 1/m.

Models without calibration scores (those exported before conformal calibration, or with a
hand-set threshold) have no p-values: `PValues.from_metadata` returns None and alerts carry
`"p_value": null`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

METADATA_KEY = "ecg.calibration"


class CalibrationError(ValueError):
    """`ecg.calibration` holds scores that cannot give p-values."""


@dataclass(frozen=True, slots=True)
class PValues:
    """Sorted calibration scores (float64) and the calibration sample size n."""

    sorted_scores: np.ndarray
    n: int
    method: str = ""

    def __post_init__(self) -> None:
        s = self.sorted_scores
        if s.ndim != 1 or s.size == 0:
            raise CalibrationError("calibration scores must be a non-empty list")
        if not np.isfinite(s).all():
            raise CalibrationError("calibration scores contain NaN or Inf")
        if (np.diff(s) < 0).any():
            raise CalibrationError("calibration scores are not sorted")
        if self.n < s.size:
            raise CalibrationError(f"n={self.n} is smaller than the {s.size} scores given")

    @classmethod
    def from_scores(cls, scores: np.ndarray, method: str = "") -> PValues:
        s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
        return cls(s, int(s.size), method)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> PValues | None:
        """From a model's metadata_props; None when it carries no calibration scores."""
        raw = meta.get(METADATA_KEY, "").strip()
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{METADATA_KEY} is not JSON: {e}") from None
        if not isinstance(data, dict) or not data.get("scores"):
            return None
        try:
            scores = np.asarray(data["scores"], dtype=np.float64)
            n = int(data.get("n", scores.size))
        except (TypeError, ValueError) as e:
            raise CalibrationError(f"{METADATA_KEY} scores: {e}") from None
        return cls(scores, n, str(data.get("method", "")))

    @property
    def exact(self) -> bool:
        """True when every calibration score is stored (not a quantile table)."""
        return self.sorted_scores.size == self.n

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """p(s) = (1 + #{cal ≥ s}) / (n + 1) for each score, float64, vectorised."""
        s = np.asarray(scores, dtype=np.float64)
        m = self.sorted_scores.size
        at_least = m - np.searchsorted(self.sorted_scores, s, side="left")
        count = at_least if self.exact else np.rint(at_least * (self.n / m))
        p: np.ndarray = (1.0 + count) / (self.n + 1.0)
        # NaN scores (never produced by a valid model) get the most conservative value
        return np.where(np.isnan(s), 1.0, p)

    def p_value(self, score: float) -> float:
        return float(self.p_values(np.asarray([score]))[0]) if math.isfinite(score) else 1.0
