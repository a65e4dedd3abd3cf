"""Detection metrics of scores against labels (numpy only): ROC and PR curves, rates at a threshold.

Shared by `ecg-train evaluate`, the plots and the int8 check; imports nothing else of training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from monitor.beats import NORMAL_CLASS
from training.errors import TrainingError

FPR_GOAL = 0.01


def _normal_mask(labels: np.ndarray, normal_class: int | Sequence[int]) -> np.ndarray:
    normal = [normal_class] if isinstance(normal_class, int) else list(normal_class)
    return np.isin(labels, normal)


def roc_auc(scores: np.ndarray, is_anomaly: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties count half); None if a class is empty."""
    pos, neg = int(is_anomaly.sum()), int((~is_anomaly).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[is_anomaly].sum() - pos * (pos + 1) / 2.0
    return float(u / (pos * neg))


def _curve(scores: np.ndarray, is_anomaly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) at each distinct threshold, highest score first."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], is_anomaly[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    return tp.astype(np.float64), fp.astype(np.float64)


def roc_curve_points(scores: np.ndarray, is_anomaly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) from (0, 0), one point per distinct score."""
    tp, fp = _curve(scores, is_anomaly)
    return np.r_[0.0, fp / int((~is_anomaly).sum())], np.r_[0.0, tp / int(is_anomaly.sum())]


def pr_auc(scores: np.ndarray, is_anomaly: np.ndarray) -> float | None:
    """Average precision: Σ (R_i − R_{i−1}) · P_i over distinct thresholds."""
    pos = int(is_anomaly.sum())
    if pos == 0:
        return None
    tp, fp = _curve(scores, is_anomaly)
    precision = tp / (tp + fp)
    recall = tp / pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def recall_at_fpr(scores: np.ndarray, is_anomaly: np.ndarray, fpr: float) -> float | None:
    """Best recall over thresholds whose false-alarm rate is <= fpr (threshold-free view)."""
    pos, neg = int(is_anomaly.sum()), int((~is_anomaly).sum())
    if pos == 0 or neg == 0:
        return None
    tp, fp = _curve(scores, is_anomaly)
    ok = fp / neg <= fpr
    return float((tp[ok] / pos).max()) if ok.any() else 0.0


def detection_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    class_names: dict[int, str],
    normal_class: int | Sequence[int] = NORMAL_CLASS,
) -> dict[str, Any]:
    """ROC/PR AUC, precision, recall, F1, false-alarm rate, confusion and per-class rates."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise TrainingError(f"{s.size} scores but {y.size} labels")
    if s.size == 0:
        raise TrainingError("no windows to evaluate")
    is_anomaly = ~_normal_mask(y, normal_class)
    flagged = s > threshold
    tp = int((flagged & is_anomaly).sum())
    fp = int((flagged & ~is_anomaly).sum())
    tn = int((~flagged & ~is_anomaly).sum())
    fn = int((~flagged & is_anomaly).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    per_class = {}
    for c in sorted(np.unique(y).tolist()):
        mask = y == c
        per_class[class_names.get(int(c), f"class_{c}")] = {
            "class": int(c),
            "n": int(mask.sum()),
            "detection_rate": float(flagged[mask].mean()),
        }
    return {
        "threshold": float(threshold),
        "n": int(s.size),
        "n_normal": int((~is_anomaly).sum()),
        "n_anomaly": int(is_anomaly.sum()),
        "roc_auc": roc_auc(s, is_anomaly),
        "pr_auc": pr_auc(s, is_anomaly),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarm_rate": fp / (fp + tn) if fp + tn else 0.0,
        "recall_at_1pct_fpr": recall_at_fpr(s, is_anomaly, FPR_GOAL),
        "recall_at_0.1pct_fpr": recall_at_fpr(s, is_anomaly, 0.001),
        "recall_at_5pct_fpr": recall_at_fpr(s, is_anomaly, 0.05),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "per_class": per_class,
    }
