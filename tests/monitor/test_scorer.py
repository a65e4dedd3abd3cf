"""Scoring: strictly above the threshold is anomalous; peak_index is the largest error."""

from __future__ import annotations

import numpy as np

from monitor.engine import Inference
from monitor.scorer import score_batch


def test_anomalous_is_score_strictly_above_threshold_and_peak_is_argmax_error() -> None:
    x = np.zeros((4, 6), np.float32)
    recon = np.zeros((4, 6), np.float32)
    x[0, 2] = 5.0
    x[1, 4] = -7.0  # absolute error counts
    x[2, 1] = 3.0
    x[3, 5] = 1.0
    score = np.array([5.0, 7.0, 3.0, 1.0], np.float32)
    s = score_batch(Inference(x, recon, score, 0.0), threshold=3.0)
    assert s.anomalous.tolist() == [True, True, False, False]
    assert s.peak_index.tolist() == [2, 4, 1, 5]
    assert s.threshold == 3.0


def test_peak_index_is_over_what_the_model_compared() -> None:
    inputs = np.array([[0.0, 1.0, 0.0]], np.float32)
    recon = np.array([[0.0, 0.0, 0.5]], np.float32)
    s = score_batch(Inference(inputs, recon, np.array([1.5], np.float32), 0.0), 1.0)
    assert s.peak_index.tolist() == [1]


def test_a_non_finite_score_is_neither_anomalous_nor_normal() -> None:
    x = np.zeros((4, 3), np.float32)
    score = np.array([np.inf, np.nan, -np.inf, 5.0], np.float32)
    s = score_batch(Inference(x, x, score, 0.0), threshold=1.0)
    assert s.finite.tolist() == [False, False, False, True]
    assert s.anomalous.tolist() == [False, False, False, True]  # +inf is not an alert
