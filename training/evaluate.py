"""`ecg-train evaluate`: score a model's test beats, then metrics (training.metrics) and plots.

MODEL is a run directory (scored with torch) or an exported .onnx file (scored with
ONNX Runtime, no torch needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from monitor.beats import check_windows, zscore
from training.data import PROTOCOLS, Dataset, load_dataset
from training.errors import TrainingError

# The metrics moved to training.metrics (plots needs them too, and plots is imported from
# here); they stay importable from this module for existing callers.
from training.metrics import (
    FPR_GOAL,
    detection_metrics,
    pr_auc,
    recall_at_fpr,
    roc_auc,
    roc_curve_points,
)

__all__ = [
    "FPR_GOAL",
    "configure",
    "detection_metrics",
    "evaluate_run",
    "evaluate_scores",
    "main",
    "pr_auc",
    "recall_at_fpr",
    "roc_auc",
    "roc_curve_points",
]


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
    from training import plots  # noqa: PLC0415 (matplotlib only when plots are asked for)

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
    metrics["variant"] = detector.model.architecture
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# ---------------------------------------------------------------- `ecg-train evaluate`


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="run directory or exported .onnx file")
    parser.add_argument(
        "--data",
        required=True,
        help="data whose test beats to score: ucr:PATH, synthetic[:N], mnist:DIR, mitdb:DIR or "
        "stream-synthetic[:MINUTES]",
    )
    parser.add_argument("--json", type=Path, help="write the metrics here as JSON")
    parser.add_argument("--records", help="mitdb records: DS1, DS2, all, names, comma lists")
    parser.add_argument("--lead", default="MLII", help="mitdb lead by header name (default: MLII)")
    parser.add_argument(
        "--beats", type=Path, help="write one CSV row per detected beat: record,r_index,label,score"
    )
    parser.add_argument(
        "--plots", type=Path, help="write PNG plots into this folder (default: none)"
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="auto",
        help="how to split the data, as for fit: seed, ucr, or auto (ucr when both files exist)",
    )
    parser.add_argument("--seed", type=int, help="split seed (default: the one the model used)")


def _trained_seed(info: dict[str, Any]) -> int:
    seed = info.get("seed", 0)
    return int(seed) if isinstance(seed, int | str) and str(seed).isdigit() else 0


def main(args: argparse.Namespace) -> int:
    path: Path = args.model
    if args.data.partition(":")[0] in ("mitdb", "stream-synthetic"):
        from training.stream_train import evaluate_main  # noqa: PLC0415 (beats, front end)

        return evaluate_main(args)
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
        variant = detector.model.architecture
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
