"""Detection metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.errors import TrainingError
from training.metrics import detection_metrics, pr_auc, recall_at_fpr, roc_auc

NAMES = {1: "normal", 2: "pvc", 3: "other"}


def test_metrics_at_threshold_match_a_hand_count() -> None:
    scores = np.array([1.0, 2.0, 3.0, 9.0, 4.0, 8.0, 10.0, 2.5])
    labels = np.array([1, 1, 1, 1, 2, 2, 3, 3])
    m = detection_metrics(scores, labels, threshold=5.0, class_names=NAMES)
    # flagged: 9 (normal -> fp), 8 (pvc -> tp), 10 (other -> tp); missed 4 (pvc), 2.5 (other)
    assert m["confusion"] == {"tp": 2, "fp": 1, "tn": 3, "fn": 2}
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["false_alarm_rate"] == pytest.approx(0.25)
    assert m["per_class"]["pvc"] == {"class": 2, "n": 2, "detection_rate": 0.5}
    assert m["per_class"]["normal"]["detection_rate"] == pytest.approx(0.25)
    assert (m["n"], m["n_normal"], m["n_anomaly"]) == (8, 4, 4)
    # ROC AUC: pairs (anomaly > normal) out of 16: 4 -> 3 of 4; 8 -> 3; 10 -> 4; 2.5 -> 2
    assert m["roc_auc"] == pytest.approx(12 / 16)


def test_roc_auc_counts_ties_half_and_handles_perfect_and_reversed() -> None:
    y = np.array([False, False, True, True])
    assert roc_auc(np.array([1.0, 2.0, 3.0, 4.0]), y) == 1.0
    assert roc_auc(np.array([4.0, 3.0, 2.0, 1.0]), y) == 0.0
    assert roc_auc(np.array([1.0, 1.0, 1.0, 1.0]), y) == 0.5
    assert roc_auc(np.array([1.0, 2.0]), np.array([False, False])) is None


def test_pr_auc_is_average_precision() -> None:
    # ranked: A(0.9) N(0.8) A(0.7) N(0.1): AP = (1/1 + 2/3) / 2
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    y = np.array([True, False, True, False])
    assert pr_auc(scores, y) == pytest.approx((1.0 + 2 / 3) / 2)


def test_recall_at_fpr_takes_the_best_threshold_within_the_false_alarm_budget() -> None:
    normal = np.arange(100, dtype=np.float64)  # 0..99
    anomalies = np.array([98.5, 120.0, 130.0, 50.0])
    scores = np.r_[normal, anomalies]
    y = np.r_[np.zeros(100, bool), np.ones(4, bool)]
    # 1 false alarm allowed (score 99): threshold between 98.5 and 99 catches 2 of 4... plus 98.5
    assert recall_at_fpr(scores, y, 0.01) == pytest.approx(0.75)
    assert recall_at_fpr(scores, y, 0.0) == pytest.approx(0.5)


def test_multiple_normal_classes_and_bad_shapes() -> None:
    m = detection_metrics(np.array([1.0, 5.0]), np.array([3, 4]), 2.0, {}, normal_class=(3, 4))
    assert m["n_anomaly"] == 0 and m["roc_auc"] is None and m["false_alarm_rate"] == 0.5
    with pytest.raises(TrainingError):
        detection_metrics(np.array([1.0]), np.array([1, 2]), 1.0, NAMES)
