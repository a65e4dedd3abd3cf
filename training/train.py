"""Fit one autoencoder variant on the normal windows of a data spec into a run directory.

Batched Adam on the L1 reconstruction loss (summed per window) plus the variant's
regulariser, early stopping on the validation loss with the best weights restored, then
threshold calibration and evaluation on the test split.

Calibration (`--calibration`, training.calibrate): `cross-conformal` (default) fits `folds`
more models of the same recipe, one per fold of ALL normal train + validation windows (by
group when the data set has groups), scores every normal window with the fold model that never
saw it, and sets the threshold at the conformal quantile of those out-of-fold scores; the
deployed model is the usual one (train split, early stopping on the validation split). Its
scores on new normals follow the out-of-fold scores' law closely (nested cross-validation in
BENCHMARKS.md, "Calibration"), and every normal window counts for calibration. `conformal`:
the conformal quantile of the validation split's scores (exact bound, but n = 20 % of the
normals); `quantile`/`lognormal`/`auto`: the older validation-split estimates.

`--score std` weights each sample's error by 1 / its spread over the training normals
(Autoencoder.standardise_score); `--score latent` adds the Mahalanobis distance of the
window's latent code from the training normals' codes, scaled to the reconstruction score
(Autoencoder.set_latent_distance). Both are baked into the exported graph.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from training.calibrate import METHODS, Calibration, calibrate, cross_conformal
from training.data import PROTOCOLS, Dataset, load_dataset
from training.detector import CALIBRATION, CHECKPOINT, Detector, resolve_device
from training.errors import TrainingError
from training.evaluate import evaluate_run
from training.mitdb import is_beat_spec
from training.models import (
    MODELS,
    Autoencoder,
    Ensemble,
    build_model,
    check_options,
    count_parameters,
    parse_options,
)
from training.multifit import Recipe, fit_one, score_windows

# Sound defaults per variant (the same recipes live in configs/train-<variant>.toml).
RECIPES: dict[str, dict[str, Any]] = {
    "dense": {"latent_dim": 16, "epochs": 300, "batch_size": 32, "lr": 1e-3, "patience": 30},
    "sparse-l1": {"latent_dim": 16, "epochs": 300, "batch_size": 32, "lr": 1e-3, "patience": 30},
    "sparse-kl": {"latent_dim": 32, "epochs": 300, "batch_size": 32, "lr": 1e-3, "patience": 30},
    "contractive": {"latent_dim": 16, "epochs": 300, "batch_size": 32, "lr": 1e-3, "patience": 30},
    "denoising": {"latent_dim": 16, "epochs": 300, "batch_size": 32, "lr": 1e-3, "patience": 30},
    "vae": {"latent_dim": 16, "epochs": 300, "batch_size": 32, "lr": 1e-3, "patience": 30},
    # Small batches: on CPU an LSTM step costs about the same per window at any batch size,
    # so batch 4 buys 8x the updates of batch 32 in the same time (batch 32 never left the
    # initial loss plateau within the time budget; batch 4 leaves it by epoch ~50).
    "lstm": {
        "latent_dim": 64,
        "epochs": 200,
        "batch_size": 4,
        "lr": 1e-3,
        "patience": 40,
        "schedule": "cosine",
        "grad_clip": 1.0,
    },
}
SCHEDULES = ("constant", "cosine")
CONFIG_KEYS = (
    "variant",
    "latent_dim",
    "epochs",
    "batch_size",
    "lr",
    "patience",
    "fpr",
    "options",
    "schedule",
    "grad_clip",
    "calibration",
    "folds",
    "score",
    "deploy",
)
SCORES = ("l1", "std", "latent")
DEPLOYS = ("single", "ensemble")
# Early-stopping slice of each cross-conformal fold model's training windows.
FOLD_ES_FRACTION = 0.1


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides a training run (recorded in the run directory)."""

    variant: str
    latent_dim: int
    epochs: int
    batch_size: int
    lr: float
    device: str = "auto"
    seed: int = 0
    patience: int = 10
    fpr: float = 0.01
    options: dict[str, Any] = field(default_factory=dict)
    schedule: str = "constant"  # or "cosine": lr decays to 2 % of lr over `epochs`
    grad_clip: float = 0.0  # max gradient norm; 0 = no clipping
    calibration: str = "cross-conformal"  # or conformal, quantile, lognormal, auto
    folds: int = 5  # cross-conformal folds (K)
    score: str = "l1"  # "l1" (plain L1 sum), "std" (standardised residuals), "latent" (+ code)
    # what is deployed: "single" = the train-split model; "ensemble" = the cross-conformal
    # fold models together (mean score; K times the inference)
    deploy: str = "single"

    def __post_init__(self) -> None:
        # Types first (a recipe file can hold anything TOML can), then ranges.
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        if self.variant not in MODELS:
            raise TrainingError(
                f"unknown variant {self.variant!r} (expected one of {', '.join(MODELS)})"
            )
        for name in ("latent_dim", "epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise TrainingError(f"lr must be > 0, got {self.lr}")
        if not 0.0 < self.fpr < 1.0:
            raise TrainingError(f"fpr must be in (0, 1), got {self.fpr}")
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.calibration not in METHODS:
            raise TrainingError(
                f"calibration must be one of {list(METHODS)}, got {self.calibration!r}"
            )
        if self.score not in SCORES:
            raise TrainingError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.folds < 2:
            raise TrainingError(f"folds must be >= 2, got {self.folds}")
        if self.deploy not in DEPLOYS:
            raise TrainingError(f"deploy must be one of {DEPLOYS}, got {self.deploy!r}")
        if self.deploy == "ensemble" and self.calibration != "cross-conformal":
            raise TrainingError(
                "deploy ensemble deploys the cross-conformal fold models: it needs "
                f"calibration cross-conformal, not {self.calibration!r}"
            )

    @property
    def deploys_ensemble(self) -> bool:
        return self.deploy == "ensemble"
        if self.grad_clip < 0:
            raise TrainingError(f"grad_clip must be >= 0, got {self.grad_clip}")
        check_options(self.variant, self.options)

    @classmethod
    def for_variant(cls, variant: str, **overrides: Any) -> FitConfig:
        """The variant's recipe from RECIPES with any field overridden."""
        if not isinstance(variant, str) or variant not in RECIPES:
            raise TrainingError(
                f"unknown variant {variant!r} (expected one of {', '.join(MODELS)})"
            )
        values = {**RECIPES[variant], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(variant=variant, **values)


def _check_type(name: str, value: Any, annotation: Any) -> None:
    """TrainingError unless `value` fits the FitConfig field's annotation (a string here)."""
    kind = str(annotation).split("[")[0]
    if kind == "int":
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok, what = ok and math.isfinite(value), "a finite number"
    elif kind == "str":
        ok, what = isinstance(value, str), "a string"
    elif kind == "dict":
        ok, what = isinstance(value, dict), "a table of KEY = VALUE"
    else:  # a new field type: teach this function about it
        raise TypeError(f"FitConfig.{name}: unchecked type {annotation}")
    if not ok:
        raise TrainingError(f"{name} must be {what}, got {value!r}")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _mean_val_loss(model: Autoencoder, x: torch.Tensor, batch: int = 512) -> float:
    """Mean L1-sum reconstruction loss of the clean windows (what detection scores)."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            scores, _ = model.score(x[i : i + batch])
            total += float(scores.sum())
    return total / x.shape[0]


def early_stop_line(epoch: int, patience: int, best_val: float, best_epoch: int) -> str:
    return (
        f"early stop at epoch {epoch}: validation loss did not improve for {patience} "
        f"epochs; best {best_val:.4g} at epoch {best_epoch} (its weights are kept)"
    )


def fit(
    cfg: FitConfig, dataset: Dataset, out: Path, *, progress: bool = True, plots: bool = True
) -> Path:
    """Train, calibrate, evaluate (metrics.json; plots/ unless plots=False); return the run dir."""
    _seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model = build_model(
        cfg.variant,
        dataset.window_length,
        cfg.latent_dim,
        zscore=dataset.preprocess == "zscore",
        **cfg.options,
    ).to(device)
    train_x = torch.from_numpy(dataset.train).to(device)
    val_x = torch.from_numpy(dataset.val).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, cfg.epochs, eta_min=cfg.lr * 0.02)
        if cfg.schedule == "cosine"
        else None
    )
    shuffle = torch.Generator().manual_seed(cfg.seed)
    history: dict[str, list[float]] = {"train": [], "train_total": [], "val": []}
    best_val, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
    started = time.monotonic()
    stopped_early = False
    bar = tqdm(total=cfg.epochs, desc=f"fit {cfg.variant}", unit="epoch", disable=not progress)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(train_x.shape[0], generator=shuffle).to(device)
        total_sum = rec_sum = 0.0
        for i in range(0, order.numel(), cfg.batch_size):
            batch = train_x[order[i : i + cfg.batch_size]]
            total, rec = model.loss(batch)
            optimiser.zero_grad(set_to_none=True)
            total.backward()  # type: ignore[no-untyped-call]
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimiser.step()
            total_sum += total.item() * batch.shape[0]
            rec_sum += rec.item() * batch.shape[0]
        if scheduler is not None:
            scheduler.step()
        model.eval()
        val = _mean_val_loss(model, val_x)
        history["train"].append(rec_sum / train_x.shape[0])
        history["train_total"].append(total_sum / train_x.shape[0])
        history["val"].append(val)
        if val < best_val:
            best_val, best_epoch = val, epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(train=f"{history['train'][-1]:.2f}", val=f"{val:.2f}", best=best_epoch)
        bar.update(1)  # counted here, so a stopped bar shows the epoch that stopped it
        if epoch - best_epoch >= cfg.patience:
            stopped_early = True
            break
    bar.close()
    if stopped_early and progress:  # else the bar stays at "53 % 160/300" with no reason
        print(
            early_stop_line(len(history["val"]), cfg.patience, best_val, best_epoch),
            file=sys.stderr,
            flush=True,
        )
    model.load_state_dict(best_state)
    model.eval()
    seconds = time.monotonic() - started

    model = model.cpu()
    model.apply_score(cfg.score, torch.from_numpy(dataset.train))
    detector = Detector(model, device="cpu")
    calibration, folds = _calibrate(cfg, dataset, detector)
    if cfg.deploys_ensemble:
        model = Ensemble(folds)
        detector = Detector(model, device="cpu")
    detector.calibration = calibration
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    record = {
        "config": asdict(cfg),
        "model": model.spec(),
        "data": dataset.fingerprint(),
        "best_val_loss": best_val,
        "best_epoch": best_epoch,
        "epochs_run": len(history["val"]),
        "stopped_early": stopped_early,
        "train_seconds": round(seconds, 2),
        "parameters": count_parameters(model),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "created": created,
    }
    torch.save(
        {**record, "state_dict": model.state_dict(), "calibration": calibration.to_json()},
        out / CHECKPOINT,
    )
    (out / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "history.json").write_text(json.dumps(history) + "\n")
    (out / CALIBRATION).write_text(json.dumps(calibration.to_json(), indent=2) + "\n")
    evaluate_run(out, dataset, plots=plots)
    return out


class _FoldScorer:
    def __init__(self, model: Autoencoder) -> None:
        self.model = model

    def score(self, x: np.ndarray) -> np.ndarray:
        return score_windows(self.model, x)


def recipe_of(cfg: FitConfig, zscore: bool = True) -> Recipe:
    """The training part of a FitConfig, for fold models (training.multifit)."""
    return Recipe(
        variant=cfg.variant,
        latent_dim=cfg.latent_dim,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        patience=cfg.patience,
        options=dict(cfg.options),
        schedule=cfg.schedule,
        grad_clip=cfg.grad_clip,
        zscore=zscore,
    )


def _calibrate(
    cfg: FitConfig, dataset: Dataset, detector: Detector
) -> tuple[Calibration, list[Autoencoder]]:
    """The calibration, and the cross-conformal fold models (none for the other methods)."""
    if cfg.calibration != "cross-conformal":
        why = {
            "conformal": "split conformal on the validation split (it also chose the stopping "
            "epoch, so the bound is nearly but not strictly exact)",
        }.get(cfg.calibration, "validation-split estimate, no finite-sample guarantee")
        cal = calibrate(detector.score(dataset.val), cfg.fpr, method=cfg.calibration, why=why)
        return cal, []
    normals = np.concatenate([dataset.train, dataset.val])
    groups = dataset.normal_groups
    recipe = recipe_of(cfg, zscore=detector.model.zscore)

    def fit_fold(x: np.ndarray, fold: int) -> _FoldScorer:
        rng = np.random.default_rng([cfg.seed, fold])
        order = rng.permutation(x.shape[0])
        n_es = max(1, round(FOLD_ES_FRACTION * order.size))
        fit_idx, es_idx = np.sort(order[n_es:]), np.sort(order[:n_es])
        fitted = fit_one(recipe, x, fit_idx, es_idx, seed=cfg.seed * 1000 + fold + 1)
        fitted.model.apply_score(cfg.score, torch.from_numpy(np.ascontiguousarray(x[fit_idx])))
        return _FoldScorer(fitted.model)

    cc = cross_conformal(fit_fold, normals, cfg.folds, groups=groups, seed=cfg.seed)
    why = (
        f"cross-conformal: every one of the {normals.shape[0]} normal train+val windows is "
        f"scored by one of {cfg.folds} fold models that never saw it"
        + (" (folds by group)" if groups is not None else "")
        + (
            "; the deployed model is these fold models together (mean score)"
            if cfg.deploys_ensemble
            else "; the deployed model is the train-split model"
        )
        + ", whose false-alarm rate at this threshold nested cross-validation measured "
        "(BENCHMARKS.md)"
    )
    cal = cc.calibration(cfg.fpr, why=why)
    folds = [m.model for m in cc.models if isinstance(m, _FoldScorer)]
    deployed = (
        score_windows(Ensemble(folds), normals) if cfg.deploys_ensemble else detector.score(normals)
    )
    extra = {
        **cal.extra,
        "deployed": f"ensemble of the {len(folds)} fold models (mean score)"
        if cfg.deploys_ensemble
        else "train-split model (early stopping on the validation split)",
        "oof_median": float(np.median(cc.oof_scores)),
        "deployed_median_on_normals": float(np.median(deployed)),
    }
    return replace(cal, extra=extra), folds


# ---------------------------------------------------------------- `ecg-train fit`


def read_recipe(path: Path) -> dict[str, Any]:
    """A TOML training recipe: top-level FitConfig fields plus an [options] table."""
    try:
        recipe = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TrainingError(f"{path}: no such recipe file") from None
    except tomllib.TOMLDecodeError as exc:
        raise TrainingError(f"{path}: bad TOML: {exc}") from None
    unknown = sorted(set(recipe) - set(CONFIG_KEYS))
    if unknown:
        raise TrainingError(f"{path}: unknown recipe keys {unknown} (allowed: {CONFIG_KEYS})")
    if not isinstance(recipe.get("options", {}), dict):
        raise TrainingError(f"{path}: options must be a table ([options] with KEY = VALUE lines)")
    return recipe


def default_threads() -> int:
    """One intra-op thread: these models are many small ops (the LSTM steps 140 times), so
    a second thread gains little, and with the cores shared OpenMP spin-waiting made an
    LSTM step up to 20x slower here. `--threads N` (at most the cores you have) changes it."""
    return 1


def recipe_default(key: str) -> str:
    """What a fit flag defaults to: the recipes' value, naming the variants that differ."""
    fallback = {f.name: f.default for f in fields(FitConfig)}.get(key)
    values = {variant: recipe.get(key, fallback) for variant, recipe in RECIPES.items()}
    common = max(values.values(), key=list(values.values()).count)
    others = ", ".join(
        f"{v} {x:g}" if isinstance(x, float) else f"{v} {x}"
        for v, x in values.items()
        if x != common
    )
    shown = f"{common:g}" if isinstance(common, float) else str(common)
    return f"(default: the recipe's, {shown}" + (f"; {others})" if others else ")")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant", choices=sorted(MODELS), help="model variant (or name it in --config)"
    )
    parser.add_argument(
        "--data",
        required=True,
        help="data: ucr:PATH (ECG5000 file or folder), synthetic[:N] (N generated beats), "
        "mnist:DIR, mitdb:DIR (WFDB records), stream-synthetic[:MINUTES]",
    )
    parser.add_argument(
        "--out", type=Path, help="run directory to write (default: runs/VARIANT-DATA-TIME)"
    )
    stream = parser.add_argument_group("continuous records (mitdb:, stream-synthetic)")
    stream.add_argument("--records", help="record list: DS1, DS2, all, names, comma lists")
    stream.add_argument("--lead", default="MLII", help="lead by header name (default: MLII)")
    stream.add_argument("--segmentation", help="JSON (inline or file) overriding the default")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="RECIPE",
        help="TOML training recipe, e.g. configs/train-dense.toml; flags override it",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"epochs at most; early stopping may end sooner {recipe_default('epochs')}",
    )
    parser.add_argument(
        "--batch-size", type=int, help=f"windows per step {recipe_default('batch_size')}"
    )
    parser.add_argument(
        "--latent-dim",
        type=int,
        help=f"code size; for lstm the embedding size {recipe_default('latent_dim')}",
    )
    parser.add_argument("--lr", type=float, help=f"Adam learning rate {recipe_default('lr')}")
    parser.add_argument(
        "--patience",
        type=int,
        help="stop after this many epochs without a better validation loss "
        + recipe_default("patience"),
    )
    parser.add_argument(
        "--fpr",
        type=float,
        help="share of normal beats allowed to alarm; sets the threshold " + recipe_default("fpr"),
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help=f"learning-rate schedule {recipe_default('schedule')}",
    )
    parser.add_argument(
        "--calibration",
        choices=sorted(METHODS),
        help="threshold method; cross-conformal = the conformal quantile of the out-of-fold "
        "scores of all normals (training/calibrate.py) " + recipe_default("calibration"),
    )
    parser.add_argument(
        "--folds",
        type=int,
        help="cross-conformal fold models (continuous records: leave-records-out folds, 6) "
        + recipe_default("folds"),
    )
    parser.add_argument(
        "--score",
        choices=SCORES,
        help="l1 (plain), std (per-sample standardised residuals) or latent (plus the code's "
        "Mahalanobis distance from the training normals') " + recipe_default("score"),
    )
    parser.add_argument(
        "--deploy",
        choices=DEPLOYS,
        help="single (the train-split model) or ensemble (the cross-conformal fold models "
        "together, mean score; K times the inference) " + recipe_default("deploy"),
    )
    parser.add_argument(
        "--grad-clip",
        type=float,
        help=f"largest gradient norm, 0 = no clipping {recipe_default('grad_clip')}",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where to train; auto = CUDA when torch sees a GPU",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the split and the training")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="auto",
        help="how to split the data: seed (85/10/5 of normal beats), ucr (TRAIN/TEST files), "
        "auto (ucr when both files are there)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="variant option, repeatable; with their defaults: hidden=0 (dense family; 0 = "
        "128 for ECG beats), l1=0.05 (sparse-l1), rho=0.05 beta=1.0 (sparse-kl), lam=0.01 "
        "(contractive), noise=gaussian|speckle sigma=0.2 (denoising), beta=1.0 (vae)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="torch CPU threads (more rarely help these small models)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def config_from_args(args: argparse.Namespace) -> FitConfig:
    recipe = read_recipe(args.config) if args.config else {}
    variant = args.variant or recipe.get("variant")
    if variant is None:
        raise TrainingError("no variant: pass --variant or a --config recipe that names one")
    options = {**recipe.get("options", {}), **parse_options(args.option)}
    try:
        base = FitConfig.for_variant(
            variant, **{k: v for k, v in recipe.items() if k not in ("variant", "options")}
        )
        check_options(variant, recipe.get("options", {}))
    except TrainingError as exc:
        raise TrainingError(f"{args.config}: {exc}" if args.config else str(exc)) from None
    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(FitConfig)
        if f.name not in ("variant", "options") and getattr(args, f.name, None) is not None
    }
    return replace(base, options=options, **overrides)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def main(args: argparse.Namespace) -> int:
    if is_beat_spec(args.data):
        from training.stream_train import fit_main  # noqa: PLC0415

        return fit_main(args)
    torch.set_num_threads(max(1, args.threads))
    cfg = config_from_args(args)
    dataset = load_dataset(args.data, protocol=args.protocol, seed=cfg.seed)
    out = args.out or Path("runs") / (
        f"{cfg.variant}-{dataset.name.lower()}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    )
    run_dir = fit(cfg, dataset, out, progress=not args.quiet, plots=not args.no_plots)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    shown = ("roc_auc", "recall", "false_alarm_rate", "threshold")
    print(f"{run_dir}: " + " ".join(f"{k}={_fmt(metrics.get(k))}" for k in shown))
    return 0
