"""Stream models: an autoencoder on front-end beats plus an RR-context term, one score.

A beat's score (the model's `score` output, the one number the daemon thresholds) is

    score = Σ_t |w_t − ŵ_t|  +  weight · Σ_j |g·f_j − μ_j| / σ_j     (context term)

* `w` the beat window as the front end cut and normalised it (`ecg.segmentation`), `ŵ` the
  autoencoder's reconstruction: the window model's L1 sum.
* `f` three one-sided RR features computed in the graph from the `context` input
  (`pre_rr_ratio`, `post_rr_ratio`: RR before / after the beat over the local mean RR):
  prematurity `max(0, 1 − pre)`, pause `max(0, post − 1)`, and pause against the previous
  interval `max(0, post/pre − 1)`. One-sided because only an early beat or a long pause is
  ectopic: the normal beat after a compensatory pause (long pre-RR) is not.
* `g = 1 / (1 + rr_irregularity / gate)` when the context has `rr_irregularity`, else 1:
  RR deviations count less where every RR is irregular (atrial fibrillation).
* `μ_j, σ_j` the median and 1.4826·MAD (+1e-3) of `g·f_j` over the training N beats (on
  MIT-BIH most N beats have f_j = 0, so μ = 0 and σ = 1e-3: the term is a weighted sum of the
  gated one-sided deviations), and
  `weight = λ · median(L1) / median(term)` over the same beats, so λ is the share of the
  context term relative to a typical reconstruction error.

All constants are in the ONNX graph and repeated in the `ecg.score_definition` metadata.
Training uses N beats only; λ, the window and the features are chosen by leave-records-out
cross-validation (BENCHMARKS.md, "MIT-BIH inter-patient").
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from monitor.frontend.segment import Segmentation
from training.calibrate import METHODS, Calibration, calibrate
from training.errors import TrainingError
from training.mitdb import RecordBeats, split_records
from training.models import Autoencoder, build_model, l1_sum, load_state

RR_FEATURES = ("prematurity", "pause", "pause_vs_pre")
MAD_TO_SD = 1.4826
SCALE_FLOOR = 1e-3
SCORE_BATCH = 2048


@dataclass(frozen=True)
class StreamFitConfig:
    """The recipe of a stream model (recorded in the run directory)."""

    variant: str = "dense"
    latent_dim: int = 16
    hidden: int = 64
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    lam: float = 1.0  # context-term share; 0 = window reconstruction only
    gate: float = 0.05  # rr_irregularity scale of the AF gate
    max_train_beats: int = 15000  # N beats sampled per fit (the cores are shared)
    folds: int = 6  # leave-records-out folds for CV and calibration
    fpr: float = 0.01
    calibration: str = "cross-conformal"  # the out-of-fold N scores are cross-conformal
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("latent_dim", "hidden", "epochs", "batch_size", "max_train_beats"):
            if int(getattr(self, name)) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.lam < 0 or not self.gate > 0:
            raise TrainingError("lr and gate must be > 0 and lam >= 0")
        if not 0.0 < self.fpr < 1.0:
            raise TrainingError(f"fpr must be in (0, 1), got {self.fpr}")
        if self.calibration not in METHODS:
            raise TrainingError(f"calibration must be one of {list(METHODS)}")


class StreamScorer(nn.Module):
    """(windows [B, L], context [B, k]) -> (reconstruction [B, L], score [B])."""

    def __init__(
        self,
        ae: Autoencoder,
        context_names: tuple[str, ...],
        *,
        centre: list[float] | None = None,
        scale: list[float] | None = None,
        weight: float = 0.0,
        gate: float = 0.05,
    ) -> None:
        super().__init__()
        self.ae = ae
        self.context_names = tuple(context_names)
        self.uses_rr = weight > 0 and {"pre_rr_ratio", "post_rr_ratio"} <= set(context_names)
        n = len(RR_FEATURES)
        self.register_buffer("centre", torch.tensor(centre or [0.0] * n, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale or [1.0] * n, dtype=torch.float32))
        self.weight = float(weight)
        self.gate = float(gate)

    def _col(self, context: Tensor, name: str) -> Tensor:
        return context[:, self.context_names.index(name)]

    def rr_features(self, context: Tensor) -> Tensor:
        """g · (prematurity, pause, pause_vs_pre): [B, 3]."""
        pre = self._col(context, "pre_rr_ratio")
        post = self._col(context, "post_rr_ratio")
        f = torch.stack(
            [
                torch.relu(1.0 - pre),
                torch.relu(post - 1.0),
                torch.relu(post / torch.clamp(pre, min=1e-3) - 1.0),
            ],
            dim=1,
        )
        if "rr_irregularity" in self.context_names:
            g = 1.0 / (1.0 + self._col(context, "rr_irregularity") / self.gate)
            f = f * g[:, None]
        return f

    def context_term(self, context: Tensor) -> Tensor:
        centre: Tensor = self.centre  # type: ignore[assignment]
        scale: Tensor = self.scale  # type: ignore[assignment]
        return ((self.rr_features(context) - centre).abs() / scale).sum(dim=1)

    def forward(self, windows: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        recon = self.ae.reconstruct_prepared(windows)
        score = l1_sum(windows, recon)
        if self.uses_rr:
            if context is None:
                raise TrainingError("this model needs the context input")
            score = score + self.weight * self.context_term(context)
        return recon, score

    def params(self) -> dict[str, Any]:
        """Everything beyond the autoencoder that the score needs (checkpoint + metadata)."""
        centre: Tensor = self.centre  # type: ignore[assignment]
        scale: Tensor = self.scale  # type: ignore[assignment]
        return {
            "context_names": list(self.context_names),
            "rr_features": list(RR_FEATURES) if self.uses_rr else [],
            "centre": [float(v) for v in centre.tolist()],
            "scale": [float(v) for v in scale.tolist()],
            "weight": self.weight,
            "gate": self.gate,
            "uses_rr": self.uses_rr,
        }

    def score_numpy(
        self, windows: np.ndarray, context: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [n], reconstructions float32 [n, L]) batched, no grad."""
        scores, recons = [], []
        with torch.no_grad():
            for i in range(0, windows.shape[0], SCORE_BATCH):
                w = torch.from_numpy(np.ascontiguousarray(windows[i : i + SCORE_BATCH]))
                c = torch.from_numpy(np.ascontiguousarray(context[i : i + SCORE_BATCH]))
                r, s = self(w, c)
                scores.append(s.numpy())
                recons.append(r.numpy())
        if not scores:
            return np.zeros(0, np.float32), np.zeros((0, windows.shape[1]), np.float32)
        return np.concatenate(scores).astype(np.float32), np.concatenate(recons)


def score_definition(scorer: StreamScorer) -> dict[str, Any]:
    """The `ecg.score_definition` metadata: the formula and every constant in it."""
    p = scorer.params()
    if not p["uses_rr"]:
        return {"score": "l1_sum", "formula": "sum_t |w_t - recon_t|"}
    return {
        "score": "l1_sum_plus_rr_context",
        "formula": "sum_t |w_t - recon_t| + weight * sum_j |g * f_j - centre_j| / scale_j",
        "features": {
            "prematurity": "max(0, 1 - pre_rr_ratio)",
            "pause": "max(0, post_rr_ratio - 1)",
            "pause_vs_pre": "max(0, post_rr_ratio / max(pre_rr_ratio, 1e-3) - 1)",
        },
        "gate": (
            "g = 1 / (1 + rr_irregularity / gate), multiplies each feature before centring"
            if "rr_irregularity" in p["context_names"]
            else "g = 1"
        ),
        **{k: p[k] for k in ("context_names", "centre", "scale", "weight", "gate")},
    }


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _normal_beats(records: list[RecordBeats]) -> tuple[np.ndarray, np.ndarray]:
    w = [r.windows[r.label == "N"] for r in records]
    c = [r.context[r.label == "N"] for r in records]
    if not w or sum(x.shape[0] for x in w) < 10:
        raise TrainingError("fewer than 10 N beats to train on")
    return np.concatenate(w), np.concatenate(c)


def fit_scorer(
    cfg: StreamFitConfig, records: list[RecordBeats], seg: Segmentation, *, seed: int | None = None
) -> tuple[StreamScorer, dict[str, Any]]:
    """Train the autoencoder on the N beats of RECORDS (fixed epochs: every fold and the
    final model get the same recipe) and fit the context term's constants on them."""
    seed = cfg.seed if seed is None else seed
    _seed_all(seed)
    windows, context = _normal_beats(records)
    pick = np.random.default_rng(seed).permutation(windows.shape[0])[: cfg.max_train_beats]
    windows, context = windows[np.sort(pick)], context[np.sort(pick)]
    ae = build_model(
        cfg.variant, seg.window_length, cfg.latent_dim, zscore=False, hidden=cfg.hidden
    )
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    x = torch.from_numpy(windows)
    gen = torch.Generator().manual_seed(seed)
    history: list[float] = []
    started = time.monotonic()
    for _ in range(cfg.epochs):
        ae.train()
        order = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for i in range(0, x.shape[0], cfg.batch_size):
            batch = x[order[i : i + cfg.batch_size]]
            loss, rec = ae.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(rec.detach()) * batch.shape[0]
        history.append(total / x.shape[0])
    ae.eval()
    scorer = StreamScorer(ae, seg.context, gate=cfg.gate)
    if cfg.lam > 0 and {"pre_rr_ratio", "post_rr_ratio"} <= set(seg.context):
        with torch.no_grad():
            f = scorer.rr_features(torch.from_numpy(context)).numpy().astype(np.float64)
            centre = np.median(f, axis=0)
            scale = MAD_TO_SD * np.median(np.abs(f - centre), axis=0) + SCALE_FLOOR
            term = (np.abs(f - centre) / scale).sum(axis=1)
            rec_err = l1_sum(x, ae.reconstruct_prepared(x)).numpy()
        weight = cfg.lam * float(np.median(rec_err)) / max(float(np.median(term)), SCALE_FLOOR)
        scorer = StreamScorer(
            ae,
            seg.context,
            centre=centre.tolist(),
            scale=scale.tolist(),
            weight=weight,
            gate=cfg.gate,
        )
    info = {
        "train_beats": int(windows.shape[0]),
        "train_records": [r.record for r in records],
        "history": history,
        "train_seconds": round(time.monotonic() - started, 2),
    }
    return scorer.eval(), info


@dataclass
class CrossValidation:
    """Out-of-fold scores of every beat, and each fold's threshold from the other folds."""

    folds: list[list[str]]
    scores: dict[str, np.ndarray]  # record -> out-of-fold scores of its beats
    thresholds: dict[str, float]  # record -> threshold of its fold
    infos: list[dict[str, Any]]

    def normal_scores(self, records: list[RecordBeats], exclude: set[str]) -> np.ndarray:
        parts = [self.scores[r.record][r.label == "N"] for r in records if r.record not in exclude]
        return np.concatenate(parts) if parts else np.zeros(0)


def cross_validate(
    cfg: StreamFitConfig,
    records: list[RecordBeats],
    seg: Segmentation,
    *,
    log: Any = None,
) -> CrossValidation:
    """Leave-records-out CV: each fold's model is trained on the other folds' N beats and
    scores its held-out records; a fold's threshold is calibrated on the out-of-fold N
    scores of the OTHER folds (never on the records it is judged on)."""
    names = [r.record for r in records]
    folds = split_records(names, min(cfg.folds, len(names)), cfg.seed)
    scores: dict[str, np.ndarray] = {}
    infos = []
    for k, held in enumerate(folds):
        train = [r for r in records if r.record not in held]
        scorer, info = fit_scorer(cfg, train, seg, seed=cfg.seed + k)
        info["fold"] = k
        info["held_out"] = held
        infos.append(info)
        for r in records:
            if r.record in held:
                scores[r.record], _ = scorer.score_numpy(r.windows, r.context)
        if log is not None:
            log(f"fold {k + 1}/{len(folds)} held out {','.join(held)} ({info['train_seconds']} s)")
    cv = CrossValidation(folds, scores, {}, infos)
    for held in folds:
        normals = cv.normal_scores(records, set(held))
        thr = calibrate(normals, cfg.fpr, method=cfg.calibration, folds=len(folds) - 1).threshold
        for name in held:
            cv.thresholds[name] = thr
    return cv


def oof_calibration(
    cfg: StreamFitConfig, records: list[RecordBeats], cv: CrossValidation
) -> Calibration:
    """The shipped threshold: the (1 − fpr) quantile of every record's out-of-fold N scores
    (each scored by a model that never saw that record)."""
    return calibrate(
        cv.normal_scores(records, set()),
        cfg.fpr,
        method=cfg.calibration,
        folds=len(cv.folds),
        why=f"out-of-fold N scores of {len(records)} records, {len(cv.folds)} leave-records-out"
        " folds",
    )


def scorer_from_checkpoint(ckpt: dict[str, Any]) -> StreamScorer:
    spec = ckpt["model"]
    ae = build_model(spec["variant"], spec["input_dim"], spec["latent_dim"], **spec["options"])
    p = ckpt["stream"]["scorer"]
    scorer = StreamScorer(
        ae,
        tuple(p["context_names"]),
        centre=p["centre"],
        scale=p["scale"],
        weight=float(p["weight"]) if p["uses_rr"] else 0.0,
        gate=float(p["gate"]),
    )
    load_state(scorer, dict(ckpt["state_dict"]))
    return scorer.eval()


def config_dict(cfg: StreamFitConfig) -> dict[str, Any]:
    return asdict(cfg)
