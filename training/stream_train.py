"""`ecg-train fit` and `ecg-train evaluate` on continuous records (`mitdb:DIR`,
`stream-synthetic[:MINUTES]`): beats found and cut by the runtime front end.

fit = leave-records-out cross-validation (each fold's model trained on the other records'
N beats, its threshold calibrated on the other folds' out-of-fold N scores) -> `cv.json`
with the CV metrics; then the final model on every record's N beats, its threshold the
(1 − fpr) quantile of all out-of-fold N scores (calibration by record: no record's score
ever came from a model that saw it).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monitor.frontend.segment import Segmentation
from training import beat_eval
from training.errors import TrainingError
from training.mitdb import BeatData, load_beat_data
from training.models import parse_options
from training.stream_model import (
    StreamFitConfig,
    StreamScorer,
    config_dict,
    cross_validate,
    fit_scorer,
    oof_calibration,
    scorer_from_checkpoint,
)

CHECKPOINT = "checkpoint.pt"
CALIBRATION = "calibration.json"

# The segmentation of the shipped MIT-BIH model (chosen by CV: BENCHMARKS.md).
DEFAULT_SEGMENTATION = Segmentation(
    pre_s=0.25,
    post_s=0.45,
    window_length=100,
    normalise="median_amp",
    context=("pre_rr_ratio", "post_rr_ratio", "rr_irregularity"),
    local_rr_beats=16,
)


def read_segmentation(text: str | None) -> Segmentation:
    """None -> DEFAULT_SEGMENTATION; else a JSON object (inline or a file) of overrides."""
    if not text:
        return DEFAULT_SEGMENTATION
    path = Path(text)
    raw = path.read_text() if path.is_file() else text
    try:
        overrides = json.loads(raw)
    except ValueError as exc:
        raise TrainingError(f"--segmentation: not JSON: {exc}") from None
    if not isinstance(overrides, dict):
        raise TrainingError("--segmentation: expected a JSON object")
    base = json.loads(DEFAULT_SEGMENTATION.to_json())
    base.pop("context_descriptions", None)
    base.update(overrides)
    return Segmentation.from_json(json.dumps(base))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def summary_row(metrics: dict[str, Any]) -> dict[str, Any]:
    g, m = metrics["gross"], metrics["mean_over_records"]
    return {
        "roc_auc_abnormal": g["roc_auc_abnormal"],
        "roc_auc_V": g["roc_auc_V"],
        "roc_auc_S": g["roc_auc_S"],
        "false_alarm_rate": g["false_alarm_rate"],
        "se_V": g["se_V"],
        "se_S": g["se_S"],
        "ppv_V": g["ppv_V"],
        "se_V_at_0.01_fpr": g.get("se_V_at_0.01_fpr"),
        "mean_roc_auc_abnormal": m["roc_auc_abnormal"],
        "mean_roc_auc_V": m["roc_auc_V"],
        "mean_roc_auc_S": m["roc_auc_S"],
        "mean_false_alarm_rate": m["false_alarm_rate"],
        "mean_se_V": m["se_V"],
        "mean_se_S": m["se_S"],
    }


def fit_stream(
    cfg: StreamFitConfig, data: BeatData, out: Path, *, model_name: str | None = None
) -> Path:
    records = list(data.records)
    seg = data.segmentation
    cv = cross_validate(cfg, records, seg, log=_log)
    cv_metrics = beat_eval.beat_metrics(records, cv.scores, cv.thresholds, cfg.fpr)
    cv_metrics["folds"] = cv.folds
    cv_metrics["protocol"] = (
        "leave-records-out CV: fold model trained on the other folds' N beats; fold threshold "
        "= calibrated on the other folds' out-of-fold N scores"
    )
    calibration = oof_calibration(cfg, records, cv)
    _log(f"final model on {len(records)} records")
    scorer, info = fit_scorer(cfg, records, seg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    cal = calibration.to_json()
    cal["source"] = f"out-of-fold N scores of {len(records)} records ({len(cv.folds)} folds)"
    record = {
        "config": config_dict(cfg),
        "model": scorer.ae.spec(),
        "data": data.fingerprint(),
        "stream": {
            "segmentation": seg.to_json(),
            "scorer": scorer.params(),
            "model_name": model_name or f"{data.name}-{cfg.variant}",
            "cv_summary": {**summary_row(cv_metrics), "folds": cv.folds},
        },
        "calibration": cal,
        "train": info,
        "created": created,
        "torch_threads": torch.get_num_threads(),
    }
    torch.save({**record, "state_dict": scorer.state_dict()}, out / CHECKPOINT)
    (out / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / CALIBRATION).write_text(json.dumps(cal, indent=2) + "\n")
    (out / "cv.json").write_text(json.dumps(cv_metrics, indent=2) + "\n")
    (out / "cv_table.txt").write_text(beat_eval.table(cv_metrics) + "\n")
    arrays: dict[str, np.ndarray] = {}
    for r in records:
        arrays[f"{r.record}_score"] = cv.scores[r.record]
        arrays[f"{r.record}_label"] = r.label
    np.savez_compressed(out / "cv_scores.npz", allow_pickle=False, **arrays)
    return out


def fit_main(args: argparse.Namespace) -> int:
    """`ecg-train fit --data mitdb:DIR|stream-synthetic[:MIN] …`"""

    torch.set_num_threads(max(1, args.threads))
    options = parse_options(args.option)
    names = {f.name for f in fields(StreamFitConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TrainingError(f"unknown stream options {unknown} (allowed: {sorted(names)})")
    given = {
        "variant": args.variant,
        "latent_dim": args.latent_dim,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "fpr": args.fpr,
        "calibration": args.calibration,
        "folds": args.folds,
        "seed": args.seed,
    }
    cfg = replace(StreamFitConfig(), **options, **{k: v for k, v in given.items() if v is not None})
    seg = read_segmentation(args.segmentation)
    data = load_beat_data(args.data, seg, records=args.records, lead=args.lead, seed=cfg.seed)
    out = args.out or Path("runs") / (
        f"{cfg.variant}-{data.name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    )
    run_dir = fit_stream(cfg, data, out)
    summary = json.loads((run_dir / "config.json").read_text())["stream"]["cv_summary"]
    shown = ("roc_auc_abnormal", "roc_auc_V", "roc_auc_S", "false_alarm_rate", "se_V", "se_S")
    print(f"{run_dir}: CV " + " ".join(f"{k}={summary[k]:.4f}" for k in shown if summary[k]))
    return 0


# ---------------------------------------------------------------- evaluate


def _scorer_for(path: Path) -> tuple[Any, Segmentation, float, str]:
    """(score function (windows, context) -> scores, segmentation, threshold, variant)."""
    if path.is_dir():
        ckpt = torch.load(path / CHECKPOINT, map_location="cpu", weights_only=True)
        if "stream" not in ckpt:
            raise TrainingError(f"{path}: not a stream model run (trained on windows)")
        scorer: StreamScorer = scorer_from_checkpoint(ckpt)
        seg = Segmentation.from_json(ckpt["stream"]["segmentation"])
        return (
            lambda w, c: scorer.score_numpy(w, c)[0],
            seg,
            float(ckpt["calibration"]["threshold"]),
            str(ckpt["model"]["variant"]),
        )
    from training.onnx_scoring import OnnxModel  # noqa: PLC0415

    model = OnnxModel(path)
    if model.segmentation is None:
        raise TrainingError(f"{path}: not a stream model (no ecg.segmentation metadata)")
    return (
        lambda w, c: model.score(w, context=c)[0],
        model.segmentation,
        model.threshold,
        model.variant,
    )


def evaluate_beats(
    model: Path,
    spec: str,
    *,
    records: str | None = None,
    lead: str = "MLII",
    plots_dir: Path | None = None,
    beats_csv: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Beat-level metrics of MODEL (run dir or .onnx) on SPEC's records at the model's own
    threshold; SEED picks the synthetic patients of `stream-synthetic` (mitdb ignores it)."""
    score_fn, seg, threshold, variant = _scorer_for(Path(model))
    data = load_beat_data(
        spec, seg, records=records, lead=lead, seed=seed, keep_signal=plots_dir is not None
    )
    recs = list(data.records)
    scores: dict[str, np.ndarray] = {}
    for r in recs:
        scores[r.record] = (
            score_fn(r.windows, r.context) if len(r) else np.zeros(0, dtype=np.float32)
        )
    metrics = beat_eval.beat_metrics(recs, scores, dict.fromkeys(scores, threshold))
    metrics["qrs"] = beat_eval.qrs_metrics(recs)
    metrics["threshold"] = threshold
    metrics["variant"] = variant
    metrics["model"] = str(model)
    metrics["data"] = data.fingerprint()
    metrics["segmentation"] = json.loads(seg.to_json())
    if beats_csv is not None:
        metrics["beats_csv"] = str(beat_eval.write_beats_csv(beats_csv, recs, scores))
    if plots_dir is not None:
        from training import beat_plots  # noqa: PLC0415

        metrics["plots"] = beat_plots.draw(Path(plots_dir), recs, scores, threshold)
    return metrics


def evaluate_main(args: argparse.Namespace) -> int:
    metrics = evaluate_beats(
        args.model,
        args.data,
        records=args.records,
        lead=args.lead,
        plots_dir=args.plots,
        beats_csv=args.beats,
        seed=args.seed if args.seed is not None else 0,
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
    print(beat_eval.table(metrics), file=sys.stderr)
    q = metrics["qrs"]
    print(
        json.dumps(
            {
                "model": str(args.model),
                **{k: v for k, v in summary_row(metrics).items() if not k.startswith("mean_")},
                "qrs_se_150ms": q["se_150ms"],
                "qrs_ppv_150ms": q["ppv_150ms"],
            }
        )
    )
    return 0
