"""Train the several models of one recipe that cross-conformal calibration and repeated
cross-validation need (fold models, refits), each on its own windows.

Each model has its own initialisation and shuffling (from `seed`), its own early stopping on
its own validation windows (best weights restored after `patience` epochs without gain), or a
fixed number of epochs (a refit on all windows, with no validation set left). Measured here:
stacking the models under `torch.func.vmap` did not beat this loop on these small networks
(25 dense models: 155 s stacked, about 6 s each in a loop), so the loop it is.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.errors import TrainingError
from training.models import Autoencoder, build_model


@dataclass
class Recipe:
    """The training knobs shared by the stacked models (a FitConfig's training part)."""

    variant: str
    latent_dim: int
    epochs: int
    batch_size: int
    lr: float
    patience: int
    options: dict[str, Any] = field(default_factory=dict)
    schedule: str = "constant"
    grad_clip: float = 0.0
    zscore: bool = True


@dataclass
class Fitted:
    """One trained model with its early-stopping record."""

    model: Autoencoder
    best_epoch: int
    best_val: float
    epochs_run: int
    history: dict[str, list[float]]


def _build(recipe: Recipe, length: int, seed: int) -> Autoencoder:
    torch.manual_seed(seed)
    return build_model(
        recipe.variant, length, recipe.latent_dim, zscore=recipe.zscore, **recipe.options
    )


def fit_many(
    recipe: Recipe,
    data: np.ndarray,
    train_sets: list[np.ndarray],
    val_sets: list[np.ndarray],
    *,
    seed: int = 0,
    fixed_epochs: list[int] | None = None,
) -> list[Fitted]:
    """One model per (train_set, val_set) of row indices into `data`: early stopping on the
    val set, or with `fixed_epochs` (one per model) that many epochs and the last weights."""
    if len(train_sets) != len(val_sets) or not train_sets:
        raise TrainingError("fit_many needs one val set per train set")
    return [
        fit_one(
            recipe,
            data,
            tr,
            va,
            seed=seed * 1000 + m,
            epochs=None if fixed_epochs is None else fixed_epochs[m],
        )
        for m, (tr, va) in enumerate(zip(train_sets, val_sets, strict=True))
    ]


def fit_one(
    recipe: Recipe,
    data: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    *,
    seed: int = 0,
    epochs: int | None = None,
) -> Fitted:
    """One model, the ordinary way (the LSTM, or any variant when vmap is not wanted)."""
    model = _build(recipe, int(data.shape[1]), seed)
    x = torch.from_numpy(np.ascontiguousarray(data[train], dtype=np.float32))
    xv = torch.from_numpy(np.ascontiguousarray(data[val], dtype=np.float32))
    n_epochs = recipe.epochs if epochs is None else epochs
    early = epochs is None and xv.shape[0] > 0
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, n_epochs, eta_min=recipe.lr * 0.02)
        if recipe.schedule == "cosine"
        else None
    )
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"train": [], "train_total": [], "val": []}
    best_val, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    epoch = 0
    for epoch in range(1, n_epochs + 1):
        model.train()
        order = torch.randperm(x.shape[0], generator=gen)
        tot = rec_s = 0.0
        for i in range(0, x.shape[0], recipe.batch_size):
            batch = x[order[i : i + recipe.batch_size]]
            total, rec = model.loss(batch)
            optimiser.zero_grad(set_to_none=True)
            total.backward()  # type: ignore[no-untyped-call]
            if recipe.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimiser.step()
            tot += total.item() * batch.shape[0]
            rec_s += rec.item() * batch.shape[0]
        if scheduler is not None:
            scheduler.step()
        model.eval()
        history["train"].append(rec_s / x.shape[0])
        history["train_total"].append(tot / x.shape[0])
        if early:
            with torch.no_grad():
                val_loss = float(model.score(xv)[0].mean())
            history["val"].append(val_loss)
            if val_loss < best_val:
                best_val, best_epoch = val_loss, epoch
                best_state = copy.deepcopy(model.state_dict())
            if epoch - best_epoch >= recipe.patience:
                break
        else:
            history["val"].append(math.nan)
    if early:
        model.load_state_dict(best_state)
    model.eval()
    return Fitted(model, best_epoch if early else epoch, best_val, epoch, history)


def score_windows(model: Autoencoder, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """The model's (possibly weighted) score of windows, float64 [n]."""
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32))
            out.append(model.score(xb)[0].double().numpy())
    return np.concatenate(out) if out else np.zeros(0)
