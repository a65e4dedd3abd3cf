"""Detection metrics at the calibrated threshold (numpy only) and `ecg-train evaluate`.

MODEL is a run directory (scored with torch) or an exported .onnx file (scored with
ONNX Runtime, no torch needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monitor.beats import NORMAL_CLASS, check_windows, zscore
from training.data import PROTOCOLS, Dataset, load_dataset
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


def _plots(
    plots_dir: Path,
    dataset: Dataset,
    *,
    prepared: np.ndarray,
    scores: np.ndarray,
    recon: np.ndarray,
    threshold: float,
    history: dict[str, list[float]] | None,
) -> list[str]:
    from training import plots  # noqa: PLC0415 (plots builds its ROC on this module's curve)

    normal = dataset.normal_classes[0]
    y = dataset.test_y
    written = []
    if history and history.get("val"):
        written.append(plots.loss_curves(history, plots_dir / "loss_curves.png"))
    if dataset.test_is_anomaly.any() and (~dataset.test_is_anomaly).any():
        written.append(
            plots.score_histogram(scores, y, threshold, plots_dir / "score_histogram.png", normal)
        )
        written.append(plots.roc_curve(scores, y, plots_dir / "roc_curve.png", normal))
    if prepared.shape[1] != 784:
        written.append(
            plots.reconstructions(
                prepared, recon, y, dataset.class_names, plots_dir / "reconstructions.png"
            )
        )
    return [str(p) for p in written]


def evaluate_scores(
    dataset: Dataset,
    scores: np.ndarray,
    recon: np.ndarray,
    threshold: float,
    *,
    plots_dir: Path | None = None,
    history: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    metrics = detection_metrics(
        scores, dataset.test_y, threshold, dataset.class_names, dataset.normal_classes
    )
    metrics["data"] = dataset.fingerprint()
    if plots_dir is not None:
        prepared = zscore(dataset.test_x) if dataset.preprocess == "zscore" else dataset.test_x
        metrics["plots"] = _plots(
            Path(plots_dir),
            dataset,
            prepared=prepared,
            scores=scores,
            recon=recon,
            threshold=threshold,
            history=history,
        )
    return metrics


def evaluate_run(
    run_dir: Path, dataset: Dataset, *, plots_dir: Path | None = None, plots: bool = True
) -> dict[str, Any]:
    """Score the test split with a run's detector; write metrics.json and plots into the run."""
    from training.detector import Detector  # noqa: PLC0415 (torch only when needed)

    run_dir = Path(run_dir)
    detector = Detector.load(run_dir)
    check_windows(dataset.test_x, dataset.spec, detector.window_length)
    scores, recon = detector.score_and_reconstruct(dataset.test_x)
    history_path = run_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else None
    metrics = evaluate_scores(
        dataset,
        scores,
        recon,
        detector.threshold,
        plots_dir=(plots_dir or run_dir / "plots") if plots else None,
        history=history,
    )
    metrics["variant"] = detector.model.variant
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# ---------------------------------------------------------------- `ecg-train evaluate`


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="run directory or exported .onnx file")
    parser.add_argument("--data", required=True, help="ucr:PATH | synthetic[:N] | mnist:DIR")
    parser.add_argument("--json", type=Path, help="write the metrics here as JSON")
    parser.add_argument("--plots", type=Path, help="write PNG plots into this folder")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="auto")
    parser.add_argument("--seed", type=int, help="split seed (default: the one the model used)")


def _trained_seed(info: dict[str, Any]) -> int:
    seed = info.get("seed", 0)
    return int(seed) if isinstance(seed, int | str) and str(seed).isdigit() else 0


def main(args: argparse.Namespace) -> int:
    path: Path = args.model
    if path.is_dir():
        from training.detector import Detector  # noqa: PLC0415 (torch only when needed)

        detector = Detector.load(path)
        seed = args.seed if args.seed is not None else _trained_seed(detector.info.get("data", {}))
        dataset = load_dataset(args.data, protocol=args.protocol, seed=seed)
        check_windows(dataset.test_x, args.data, detector.window_length)
        scores, recon = detector.score_and_reconstruct(dataset.test_x)
        threshold = detector.threshold
        history_path = path / "history.json"
        history = json.loads(history_path.read_text()) if history_path.is_file() else None
        variant = detector.model.variant
    elif path.suffix == ".onnx":
        from training.onnx_scoring import OnnxModel  # noqa: PLC0415

        model = OnnxModel(path)
        seed = args.seed if args.seed is not None else _trained_seed(model.trained_on)
        dataset = load_dataset(args.data, protocol=args.protocol, seed=seed)
        scores, recon = model.score(dataset.test_x)
        threshold, history, variant = model.threshold, None, model.variant
    else:
        raise TrainingError(f"{path}: MODEL must be a run directory or a .onnx file")
    metrics = evaluate_scores(
        dataset, scores, recon, threshold, plots_dir=args.plots, history=history
    )
    metrics["variant"] = variant
    metrics["model"] = str(path)
    text = json.dumps(metrics, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    summary = {k: metrics[k] for k in ("roc_auc", "pr_auc", "recall", "false_alarm_rate")}
    print(json.dumps({"model": str(path), **summary}), file=sys.stdout)
    return 0
