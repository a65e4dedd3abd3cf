"""Alarm thresholds from normal scores, and the conformal machinery that gives them a guarantee.

Methods (`calibrate(..., method=)`; `ecg-train fit --calibration`):

* `cross-conformal` (the default for `ecg-train fit`): K folds over every normal training
  beat (by beat, or by group — a patient's record — when `groups` is given), one model per
  fold, each beat scored by the fold model that never saw it (`cross_conformal`). The
  threshold is the conformal quantile of those n out-of-fold scores (`conformal_threshold`).
* `conformal` (split conformal): the same quantile of scores of beats the deployed model never
  saw (a held-out calibration split). Exact guarantee, see `conformal_bound`.
* `quantile`: the empirical (1 − fpr) quantile (no finite-sample correction; kept for
  comparison). `lognormal`: the same quantile of a log-normal fitted by median and MAD.
  `auto`: quantile when n · fpr ≥ 5, lognormal otherwise. These were the defaults before the
  conformal methods; on ECG5000 they raised 4.5–11 % false alarms for a 1 % target (issue 10).

The conformal quantile: with n calibration scores and target false-alarm rate α, the threshold
is the k-th smallest score, k = ⌈(n + 1)(1 − α)⌉. If a new normal beat's score is exchangeable
with the n calibration scores (and ties have probability 0), P(score > threshold) =
(n + 1 − k)/(n + 1), hence α − 1/(n + 1) < P ≤ α (Vovk, Gammerman & Shafer 2005; Lei et al.
2018). When k > n no finite threshold keeps the promise; the largest score is used and the
bound says FA = 1/(n + 1) > α.

The same calibration scores give every alert its p-value, p(s) = (1 + #{cal ≥ s}) / (n + 1):
`monitor.calibration.PValues` reads them from the model's `ecg.calibration` metadata.

Numpy only: the fold models are fitted by a callback, so this module has no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np

from training.errors import TrainingError

METHOD = "normal_quantile"
METHODS = {
    "quantile": METHOD,
    "lognormal": "normal_lognormal_mad",
    "auto": "auto",
    "conformal": "split_conformal",
    "cross-conformal": "cross_conformal",
}
AUTO_MIN_EXCEEDANCES = 5.0
# At most this many calibration scores are stored in the model; above it an evenly spaced
# quantile table of this size (p-values then resolve to about 1/MAX_STORED_SCORES).
MAX_STORED_SCORES = 4096


@dataclass(frozen=True)
class Calibration:
    """How the threshold was chosen: method, target false-alarm rate, threshold, sample size.

    `scores` (sorted) are the calibration scores p-values are computed from; `bound` states
    the finite-sample guarantee (JSON-ready), `why` why this method was used.
    """

    method: str
    fpr: float
    threshold: float
    n: int
    quantile: float
    scores: tuple[float, ...] = ()
    bound: dict[str, Any] = field(default_factory=dict)
    why: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "fpr": self.fpr,
            "threshold": self.threshold,
            "n": self.n,
            "quantile": self.quantile,
        }
        if self.method == METHOD and self.n * self.fpr < 1.0:
            # With fewer than 1/fpr windows the quantile is simply the largest score seen.
            out["note"] = f"n={self.n} < 1/fpr: threshold is the maximum normal score"
        if self.scores:
            out["scores"] = list(self.scores)
            out["scores_kind"] = "all" if len(self.scores) == self.n else "quantiles"
        if self.bound:
            out["bound"] = dict(self.bound)
        if self.why:
            out["why"] = self.why
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        known = {"method", "fpr", "threshold", "n", "quantile", "note", "scores", "scores_kind"}
        known |= {"bound", "why"}
        return cls(
            method=str(data["method"]),
            fpr=float(data["fpr"]),
            threshold=float(data["threshold"]),
            n=int(data["n"]),
            quantile=float(data["quantile"]),
            scores=tuple(float(s) for s in data.get("scores", ())),
            bound=dict(data.get("bound", {})),
            why=str(data.get("why", "")),
            extra={k: v for k, v in data.items() if k not in known},
        )


def _check(scores: np.ndarray, fpr: float) -> np.ndarray:
    if not 0.0 < fpr < 1.0:
        raise TrainingError(f"fpr must be in (0, 1), got {fpr}")
    out = np.asarray(scores, dtype=np.float64).reshape(-1)
    if out.size == 0:
        raise TrainingError("no normal scores to calibrate a threshold on")
    if not np.isfinite(out).all():
        raise TrainingError("normal scores contain NaN or Inf")
    return out


def stored_scores(scores: np.ndarray, limit: int = MAX_STORED_SCORES) -> tuple[float, ...]:
    """The sorted scores, or `limit` evenly spaced order statistics of them when n > limit."""
    s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if s.size > limit:
        s = s[np.round(np.linspace(0, s.size - 1, limit)).astype(np.int64)]
    return tuple(float(v) for v in s)


def conformal_rank(n: int, fpr: float) -> int:
    """k = ⌈(n + 1)(1 − fpr)⌉ (1-based rank of the threshold among n sorted scores).

    Computed in integers where possible so 0.99 · 300 does not become 297.00000000000006."""
    return math.ceil(round((n + 1) * (1.0 - fpr), 9))


def conformal_bound(
    n: int, fpr: float, *, method: str = "conformal", folds: int = 0
) -> dict[str, Any]:
    """The finite-sample guarantee of a conformal threshold, JSON-ready.

    Split conformal (and the exchangeable out-of-fold reading of cross-conformal): for a new
    normal beat exchangeable with the n calibration beats, P(false alarm) = (n + 1 − k)/(n + 1)
    with k = ⌈(n + 1)(1 − α)⌉: between α − 1/(n + 1) and α. Cross-conformal adds the
    Barber, Candès, Ramdas & Tibshirani (2021, Ann. Statist. 49(1), Thm 4) CV+ worst case:
    P(false alarm) ≤ 2α + min{2(1 − 1/K)/(n/K + 1), (1 − K/n)/(K + 1)} for the CV+ rule (a new
    beat compared by each fold model against that fold's out-of-fold scores), with no
    assumption on the training algorithm's stability.
    """
    k = conformal_rank(n, fpr)
    if k > n:
        exact = 1.0 / (n + 1)
        out: dict[str, Any] = {
            "kind": "split_conformal",
            "rank": n,
            "fa_upper": exact,
            "fa_lower": exact,
            "holds": False,
            "note": f"n={n} < 1/fpr - 1: no finite threshold keeps fpr; the largest score is used",
        }
    else:
        out = {
            "kind": "split_conformal",
            "rank": k,
            "fa_upper": (n + 1 - k) / (n + 1),
            "fa_lower": max(0.0, fpr - 1.0 / (n + 1)),
            "holds": True,
            "statement": "alpha - 1/(n+1) <= P(score > threshold) = (n+1-k)/(n+1) <= alpha for a "
            "new normal exchangeable with the calibration normals (scored by a model "
            "that saw none of them)",
            "fa_given_calibration": fa_given_calibration(n, k, fpr),
        }
    if method == "cross-conformal":
        if folds < 2:
            raise TrainingError("cross-conformal bound needs the number of folds K >= 2")
        extra = min(2 * (1 - 1 / folds) / (n / folds + 1), (1 - folds / n) / (folds + 1))
        out["cv_plus_fa_upper"] = min(1.0, 2 * fpr + extra)
        out["cv_plus_statement"] = (
            "Barber et al. 2021 (jackknife+/CV+, Thm 4): P(false alarm) <= 2*alpha + "
            "min(2(1-1/K)/(n/K+1), (1-K/n)/(K+1)) for the CV+ rule, any training algorithm"
        )
        out["folds"] = folds
    return out


def fa_given_calibration(n: int, k: int, fpr: float, band: float = 0.005) -> dict[str, Any]:
    """How far one calibration's false-alarm rate can fall from its expectation.

    The bound above is an average over calibration draws. Given one set of n calibration
    scores, the false-alarm rate on new exchangeable normals, P(score > s_(k)), is itself
    random: Beta(n + 1 − k, k) distributed (the law of a uniform order statistic; Vovk 2012,
    "Conditional validity of inductive conformal predictors"). With few calibration normals
    it is wide: n = 292 at α = 1 % gives a 90 % interval of 0.12–1.61 %, so one calibration
    lands within ±0.5 pp of α only half the time; n = 2,919 gives 0.71–1.31 %.
    """
    from scipy.stats import beta  # noqa: PLC0415 (only here: the rest needs no scipy)

    a, b = n + 1 - k, k
    return {
        "distribution": f"Beta({a}, {b})",
        "mean": a / (n + 1),
        "q05": float(beta.ppf(0.05, a, b)),
        "q50": float(beta.ppf(0.5, a, b)),
        "q95": float(beta.ppf(0.95, a, b)),
        # P(|false-alarm rate - fpr| <= band) for this one calibration
        "p_within": float(beta.cdf(fpr + band, a, b) - beta.cdf(max(fpr - band, 0.0), a, b)),
        "band": band,
    }


def conformal_threshold(scores: np.ndarray, fpr: float) -> tuple[float, int]:
    """(threshold, rank k): the k-th smallest of the scores, k = ⌈(n + 1)(1 − fpr)⌉ (clipped
    to n when the sample is too small for a finite conformal threshold)."""
    s = np.sort(_check(scores, fpr))
    k = min(conformal_rank(s.size, fpr), s.size)
    return float(s[k - 1]), k


def calibrate(
    normal_scores: np.ndarray,
    fpr: float = 0.01,
    *,
    method: str = "auto",
    folds: int = 0,
    why: str = "",
) -> Calibration:
    """Threshold from normal scores by `method` (see the module docstring).

    `conformal` / `cross-conformal` expect scores of beats the scoring model never saw (for
    cross-conformal: the out-of-fold scores from `cross_conformal`, with its `folds`)."""
    if method not in METHODS:
        raise TrainingError(f"unknown calibration method {method!r} (expected {list(METHODS)})")
    scores = _check(normal_scores, fpr)
    q = 1.0 - fpr
    if method in ("conformal", "cross-conformal"):
        threshold, k = conformal_threshold(scores, fpr)
        return Calibration(
            METHODS[method],
            float(fpr),
            threshold,
            int(scores.size),
            k / scores.size,
            scores=stored_scores(scores),
            bound=conformal_bound(scores.size, fpr, method=method, folds=folds),
            why=why,
        )
    if method == "auto":
        method = "quantile" if scores.size * fpr >= AUTO_MIN_EXCEEDANCES else "lognormal"
    if method == "lognormal":
        logs = np.log(np.maximum(scores, 1e-12))
        centre = float(np.median(logs))
        spread = 1.4826 * float(np.median(np.abs(logs - centre)))
        threshold = math.exp(centre + NormalDist().inv_cdf(q) * spread)
    else:
        threshold = float(np.quantile(scores, q, method="higher"))
    if not math.isfinite(threshold):
        raise TrainingError("calibrated threshold is not finite")
    return Calibration(
        METHODS[method],
        float(fpr),
        threshold,
        int(scores.size),
        q,
        scores=stored_scores(scores),
        why=why,
    )


# ---------------------------------------------------------------- folds and cross-conformal


def kfold_indices(
    n: int, k: int, *, groups: Sequence[Any] | np.ndarray | None = None, seed: int = 0
) -> list[np.ndarray]:
    """K disjoint test folds covering range(n), shuffled by `seed`.

    Without `groups`: by item, sizes differ by at most one. With `groups` (one label per item,
    e.g. the MIT-BIH record id of each beat): whole groups go to one fold, so no group is on
    both sides of a split (leave-records-out); groups are dealt largest first to the fold with
    the fewest items, so folds stay balanced."""
    if k < 2:
        raise TrainingError(f"need at least 2 folds, got {k}")
    rng = np.random.default_rng(seed)
    if groups is None:
        if n < k:
            raise TrainingError(f"{n} items cannot make {k} folds")
        order = rng.permutation(n)
        return [np.sort(part) for part in np.array_split(order, k)]
    labels = np.asarray(groups)
    if labels.shape != (n,):
        raise TrainingError(f"groups has shape {labels.shape}, expected ({n},)")
    names, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if names.size < k:
        raise TrainingError(f"{names.size} groups cannot make {k} folds")
    # random order first, then a stable sort by size: ties between equal sizes are random
    perm = rng.permutation(names.size)
    perm = perm[np.argsort(-counts[perm], kind="stable")]
    sizes = np.zeros(k, dtype=np.int64)
    fold_of_group = np.empty(names.size, dtype=np.int64)
    for g in perm.tolist():
        f = int(np.argmin(sizes))
        fold_of_group[g] = f
        sizes[f] += counts[g]
    fold_of_item = fold_of_group[inverse]
    return [np.flatnonzero(fold_of_item == f) for f in range(k)]


class Scorer(Protocol):
    """Anything that scores windows (higher = more anomalous)."""

    def score(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class CrossConformal:
    """The K fold models, the out-of-fold score of every beat, and which fold held it out."""

    models: list[Any]
    oof_scores: np.ndarray  # float64 [n]
    fold_of: np.ndarray  # int64 [n]
    folds: list[np.ndarray]

    def calibration(self, fpr: float, *, why: str = "") -> Calibration:
        return calibrate(
            self.oof_scores, fpr, method="cross-conformal", folds=len(self.folds), why=why
        )

    def ensemble_score(self, x: np.ndarray) -> np.ndarray:
        """Mean score of the K fold models (the ensemble deployment)."""
        stacked = np.stack([np.asarray(m.score(x), dtype=np.float64) for m in self.models])
        mean: np.ndarray = stacked.mean(axis=0)
        return mean

    def cv_plus_p_values(self, x: np.ndarray) -> np.ndarray:
        """Cross-conformal (CV+) p-values of new windows: (1 + Σ_i 1{oof_i ≥ s_k(i)(x)})/(n+1),
        each calibration beat i compared with the score of x by the model of i's fold."""
        n = self.oof_scores.size
        counts = np.zeros(np.asarray(x).shape[0], dtype=np.int64)
        for model, idx in zip(self.models, self.folds, strict=True):
            cal = np.sort(self.oof_scores[idx])
            s = np.asarray(model.score(x), dtype=np.float64)
            counts += cal.size - np.searchsorted(cal, s, side="left")
        return (1.0 + counts) / (n + 1.0)


def cross_conformal(
    fit_fold: Callable[[np.ndarray, int], Scorer],
    x: np.ndarray,
    k: int = 5,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    seed: int = 0,
) -> CrossConformal:
    """Fit one model per fold with `fit_fold(train_windows, fold_index)` and score each beat
    with the model whose training set did not contain it (nor, with `groups`, its group)."""
    x = np.asarray(x)
    folds = kfold_indices(x.shape[0], k, groups=groups, seed=seed)
    oof = np.full(x.shape[0], np.nan)
    fold_of = np.full(x.shape[0], -1, dtype=np.int64)
    models = []
    everything = np.arange(x.shape[0])
    for f, test in enumerate(folds):
        train = np.setdiff1d(everything, test, assume_unique=True)
        model = fit_fold(x[train], f)
        oof[test] = np.asarray(model.score(x[test]), dtype=np.float64)
        fold_of[test] = f
        models.append(model)
    if not np.isfinite(oof).all():
        raise TrainingError("out-of-fold scores contain NaN or Inf")
    return CrossConformal(models, oof, fold_of, folds)
