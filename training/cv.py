"""Repeated nested cross-validation of one recipe: how well it ranks anomalies at the low
false-alarm end, and whether its calibrated threshold keeps its false-alarm promise on normals
that neither training nor calibration saw.

Outer loop (`repeats` × `outer_k` folds over the normal beats, by group when `groups` is
given): the held-out normals H touch nothing. On the rest T, the calibration `ecg-train fit`
uses (cross-conformal, `inner_k` folds): one model per inner fold (early stopping on a
`ES_FRACTION` slice of its own training windows), out-of-fold scores of every beat of T,
threshold = the conformal quantile of them. Then each deployment is judged on H (false-alarm
rate at that threshold) and on every anomaly (recall at it; ROC AUC and recall at fixed
false-alarm rates from the pooled held-out normal scores):

* `refit`: one model on all of T but an early-stopping slice (what `ecg-train fit` deploys);
* `ensemble`: the mean score of the inner fold models;
* `cv+`: the CV+ rule (Barber et al. 2021): a beat alarms when its cross-conformal p-value
  (each calibration beat compared with the new beat's score by that beat's fold model) is
  ≤ α — the rule the CV+ bound is proven for.

Each three times: `l1` (the plain L1 sum), `std` (per-sample standardised residuals: weights
from each model's own training windows, `Autoencoder.standardise_score`) and `latent` (plus
the Mahalanobis distance of the code from those windows' codes,
`Autoencoder.set_latent_distance`). No extra fits: the same models, other score buffers.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.calibrate import conformal_bound, conformal_threshold, kfold_indices
from training.evaluate import recall_at_fpr, roc_auc
from training.models import Autoencoder
from training.multifit import Fitted, Recipe, fit_many, score_windows

ES_FRACTION = 0.1
FA_LEVELS = (0.001, 0.01, 0.05)
SCORES = ("l1", "std", "latent")
DEPLOYS = ("refit", "ensemble", "cv+")


def split_early_stopping(
    train: np.ndarray, rng: np.random.Generator, fraction: float = ES_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """(fit windows, early-stopping windows) out of a training index set."""
    order = rng.permutation(train)
    n_es = max(1, round(fraction * order.size))
    return np.sort(order[n_es:]), np.sort(order[:n_es])


def scored_copy(model: Autoencoder, kind: str, x_normal: np.ndarray) -> Autoencoder:
    """A copy of the model whose score (`kind`) is set up from these (its own training)
    windows."""
    out = copy.deepcopy(model)
    out.apply_score(kind, torch.from_numpy(np.ascontiguousarray(x_normal, dtype=np.float32)))
    return out


def _cv_plus(fold_cal: list[np.ndarray], per_model: list[np.ndarray]) -> np.ndarray:
    """1 − the CV+ p-value: p = (1 + Σ_k #{out-of-fold scores of fold k ≥ s_k(x)}) / (n + 1)."""
    n = sum(c.size for c in fold_cal)
    counts = np.zeros(per_model[0].size)
    for c, s in zip(fold_cal, per_model, strict=True):
        counts += c.size - np.searchsorted(c, s, side="left")
    out: np.ndarray = 1.0 - (1.0 + counts) / (n + 1.0)
    return out


@dataclass
class _Collect:
    fa: list[float]
    recall: list[float]
    auc: list[float]
    normal_scores: list[np.ndarray]
    anomaly_scores: list[np.ndarray]
    bound_upper: list[float]


def nested_cv(
    recipe: Recipe,
    normals: np.ndarray,
    anomalies: np.ndarray,
    *,
    repeats: int = 5,
    outer_k: int = 5,
    inner_k: int = 5,
    fpr: float = 0.01,
    seed: int = 0,
    groups: np.ndarray | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the protocol (module docstring); return per (score, deploy) metrics, JSON-ready."""
    started = time.monotonic()
    cells = {(s, d): _Collect([], [], [], [], [], []) for s in SCORES for d in DEPLOYS}
    best_epochs: list[int] = []
    n_fits = 0
    for r in range(repeats):
        outer = kfold_indices(normals.shape[0], outer_k, groups=groups, seed=seed + 7919 * r)
        everything = np.arange(normals.shape[0])
        for o, held in enumerate(outer):
            rng = np.random.default_rng([seed, r, o])
            t_idx = np.setdiff1d(everything, held, assume_unique=True)
            t_groups = None if groups is None else groups[t_idx]
            inner = kfold_indices(t_idx.size, inner_k, groups=t_groups, seed=seed + 31 * r + o)
            tr_sets, es_sets = [], []
            for fold in inner:
                rest = np.setdiff1d(np.arange(t_idx.size), fold, assume_unique=True)
                fit_part, es_part = split_early_stopping(t_idx[rest], rng)
                tr_sets.append(fit_part)
                es_sets.append(es_part)
            fold_fits = fit_many(recipe, normals, tr_sets, es_sets, seed=seed + 100 * r + o)
            best_epochs += [f.best_epoch for f in fold_fits]
            # the deployed model, as `ecg-train fit` makes it: all of T but an early-stopping slice
            fit_t, es_t = split_early_stopping(t_idx, rng)
            refit: Fitted = fit_many(
                recipe, normals, [fit_t], [es_t], seed=seed + 100 * r + o + 50
            )[0]
            n_fits += inner_k + 1
            for kind in SCORES:
                models = [f.model for f in fold_fits]
                refit_model = refit.model
                if kind != "l1":
                    models = [
                        scored_copy(m, kind, normals[tr])
                        for m, tr in zip(models, tr_sets, strict=True)
                    ]
                    refit_model = scored_copy(refit_model, kind, normals[fit_t])
                oof = np.empty(t_idx.size)
                fold_cal = []
                for m, fold in zip(models, inner, strict=True):
                    oof[fold] = score_windows(m, normals[t_idx[fold]])
                    fold_cal.append(np.sort(oof[fold]))
                threshold, _ = conformal_threshold(oof, fpr)
                bound = conformal_bound(oof.size, fpr)
                h_x, a_x = normals[held], anomalies
                per_model_h = [score_windows(m, h_x) for m in models]
                per_model_a = [score_windows(m, a_x) for m in models]
                deployed = {
                    "refit": (
                        score_windows(refit_model, h_x),
                        score_windows(refit_model, a_x),
                        threshold,
                    ),
                    "ensemble": (
                        np.mean(per_model_h, axis=0),
                        np.mean(per_model_a, axis=0),
                        threshold,
                    ),
                }

                # CV+ as a score 1 − p: alarm when p ≤ α, i.e. 1 − p ≥ 1 − α
                deployed["cv+"] = (
                    _cv_plus(fold_cal, per_model_h),
                    _cv_plus(fold_cal, per_model_a),
                    (1.0 - fpr) - 1e-12,
                )
                for d, (hs, as_, thr) in deployed.items():
                    c = cells[(kind, d)]
                    c.fa.append(
                        float((hs > thr).mean()) if d != "cv+" else float((hs >= thr).mean())
                    )
                    c.recall.append(
                        float((as_ > thr).mean()) if d != "cv+" else float((as_ >= thr).mean())
                    )
                    both = np.r_[hs, as_]
                    lab = np.r_[np.zeros(hs.size, bool), np.ones(as_.size, bool)]
                    c.auc.append(float(roc_auc(both, lab) or math.nan))
                    c.normal_scores.append(hs)
                    c.anomaly_scores.append(as_)
                    c.bound_upper.append(float(bound["fa_upper"]))
            if log is not None:
                c = cells[("std", "refit")]
                log(
                    f"{recipe.variant} repeat {r + 1}/{repeats} fold {o + 1}/{outer_k}: "
                    f"std/refit FA {c.fa[-1]:.3f} recall {c.recall[-1]:.3f} "
                    f"({time.monotonic() - started:.0f} s)"
                )
    results = summarise(cells, outer_k)
    n_held = results[f"{SCORES[0]}/{DEPLOYS[0]}"]["held_out_judgements"]
    return {
        "variant": recipe.variant,
        "recipe": {
            k: getattr(recipe, k)
            for k in (
                "latent_dim",
                "epochs",
                "batch_size",
                "lr",
                "patience",
                "schedule",
                "grad_clip",
            )
        }
        | {"options": recipe.options},
        "protocol": {
            "repeats": repeats,
            "outer_k": outer_k,
            "inner_k": inner_k,
            "fpr": fpr,
            "seed": seed,
            "normals": int(normals.shape[0]),
            "anomalies": int(anomalies.shape[0]),
            "held_out_judgements": int(n_held),
            "grouped": groups is not None,
            "early_stopping_fraction": ES_FRACTION,
        },
        "fits": n_fits,
        "median_best_epoch": float(np.median(best_epochs)),
        "seconds": round(time.monotonic() - started, 1),
        "results": results,
        "raw": {f"{k}/{d}": _raw(c) for (k, d), c in cells.items()},
    }


def _raw(c: _Collect) -> dict[str, Any]:
    """A cell's per-fold record, enough to pool runs of different seeds (`merge_runs`)."""
    return {
        "fa": c.fa,
        "recall": c.recall,
        "auc": c.auc,
        "bound_upper": c.bound_upper,
        "normal_scores": [np.round(s, 5).tolist() for s in c.normal_scores],
        "anomaly_scores": [np.round(s, 5).tolist() for s in c.anomaly_scores],
    }


def summarise(cells: dict[tuple[str, str], _Collect], outer_k: int) -> dict[str, Any]:
    """Per (score, deploy) metrics pooled over every outer fold of every repeat, and recall at
    1 % false alarms per repeat (how much one split of the normals moves it)."""
    results: dict[str, Any] = {}
    for (kind, d), c in cells.items():
        by_repeat = []
        for r in range(0, len(c.normal_scores), outer_k):
            h = np.concatenate(c.normal_scores[r : r + outer_k])
            a = np.concatenate(c.anomaly_scores[r : r + outer_k])
            lab_r = np.r_[np.zeros(h.size, bool), np.ones(a.size, bool)]
            by_repeat.append(recall_at_fpr(np.r_[h, a], lab_r, 0.01))
        hs = np.concatenate(c.normal_scores)
        as_ = np.concatenate(c.anomaly_scores)
        lab = np.r_[np.zeros(hs.size, bool), np.ones(as_.size, bool)]
        both = np.r_[hs, as_]
        fa = np.asarray(c.fa)
        weights = np.asarray([s.size for s in c.normal_scores], dtype=np.float64)
        fa_pooled = float((fa * weights).sum() / weights.sum())
        results[f"{kind}/{d}"] = {
            "score": kind,
            "deploy": d,
            "roc_auc_pooled": roc_auc(both, lab),
            "roc_auc_mean": float(np.mean(c.auc)),
            **{f"recall_at_{lvl:g}": recall_at_fpr(both, lab, lvl) for lvl in FA_LEVELS},
            "recall_at_threshold": float(np.mean(c.recall)),
            "fa_at_threshold": fa_pooled,
            # between-fold spread of the measured rate: the honest sampling error (it includes
            # the calibration draw, which a binomial error over beats would leave out)
            "fa_se": float(fa.std(ddof=1) / math.sqrt(fa.size)) if fa.size > 1 else math.nan,
            "fa_binomial_se": math.sqrt(max(fa_pooled * (1 - fa_pooled), 1e-12) / weights.sum()),
            "bound_fa_upper": float(np.mean(c.bound_upper)),
            "held_out_judgements": int(weights.sum()),
            "recall_at_0.01_by_repeat": by_repeat,
        }
    return results


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run out of several of the same recipe and protocol with different seeds (e.g. run
    side by side on two cores): the repeats add up, and every metric is pooled again. A cell
    that only some runs have (a score kind added later) pools those runs and says how many
    repeats it holds."""
    first = runs[0]
    cells: dict[tuple[str, str], _Collect] = {}
    repeats: dict[str, int] = {}
    for key in dict.fromkeys(k for run in runs for k in run["raw"]):
        kind, _, d = key.partition("/")
        c = _Collect([], [], [], [], [], [])
        repeats[key] = 0
        for run in runs:
            raw = run["raw"].get(key)
            if raw is None:
                continue
            repeats[key] += int(run["protocol"]["repeats"])
            c.fa += raw["fa"]
            c.recall += raw["recall"]
            c.auc += raw["auc"]
            c.bound_upper += raw["bound_upper"]
            c.normal_scores += [np.asarray(s) for s in raw["normal_scores"]]
            c.anomaly_scores += [np.asarray(s) for s in raw["anomaly_scores"]]
        cells[(kind, d)] = c
    merged = dict(first)
    merged["protocol"] = dict(first["protocol"]) | {
        "repeats": sum(int(r["protocol"]["repeats"]) for r in runs),
        "seed": [r["protocol"]["seed"] for r in runs],
    }
    merged["fits"] = sum(int(r["fits"]) for r in runs)
    merged["seconds"] = sum(float(r["seconds"]) for r in runs)
    merged["results"] = summarise(cells, int(first["protocol"]["outer_k"]))
    for key, n in repeats.items():
        merged["results"][key]["repeats"] = n
    merged["raw"] = {f"{k}/{d}": _raw(c) for (k, d), c in cells.items()}
    return merged
