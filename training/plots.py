"""Headless PNG figures for runs and case studies: numpy in, one file out per call."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from training.errors import TrainingError
from training.metrics import roc_curve_points

DPI = 100
NORMAL_COLOUR = "tab:blue"
ANOMALY_COLOUR = "tab:red"


class PlotError(TrainingError):
    """Inputs to a plot that do not fit together (shapes, lengths, empty data)."""


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def _scores_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise PlotError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if s.size == 0:
        raise PlotError("no scores to plot")
    return s, y


def roc_points(
    scores: np.ndarray, labels: np.ndarray, normal_class: int = 1
) -> tuple[np.ndarray, np.ndarray, float]:
    """False/true positive rates over all thresholds (anomaly = positive) and the AUC."""
    s, y = _scores_labels(scores, labels)
    positive = y != normal_class
    if positive.all() or not positive.any():
        raise PlotError("an ROC curve needs both normal and anomalous windows")
    # One point per distinct score, so ties move diagonally (the standard AUC).
    fpr, tpr = roc_curve_points(s, positive)
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return fpr, tpr, auc


def loss_curves(history: dict[str, list[float]], path: Path) -> Path:
    """Every series in the history (train/val, total/recon) against the epoch."""
    series = {k: v for k, v in history.items() if len(v) > 0}
    if not series:
        raise PlotError("history holds no loss values")
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for name, values in series.items():
        epochs = np.arange(1, len(values) + 1)
        ax.plot(epochs, values, marker="o" if len(values) < 30 else None, ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (L1 sum per window + regulariser)")
    ax.set_title("Training history")
    values_all = np.concatenate([np.asarray(v, dtype=np.float64) for v in series.values()])
    if np.all(values_all > 0) and values_all.max() / values_all.min() > 30:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def score_histogram(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    path: Path,
    normal_class: int = 1,
) -> Path:
    """Score distributions of normal vs anomalous windows with the alarm threshold."""
    s, y = _scores_labels(scores, labels)
    normal = y == normal_class
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    finite = s[np.isfinite(s)]
    lo = min(float(finite.min()), float(threshold))
    hi = max(float(finite.max()), float(threshold))
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 50).tolist()
    if normal.any():
        ax.hist(
            s[normal],
            bins=bins,
            alpha=0.6,
            color=NORMAL_COLOUR,
            label=f"normal (n={int(normal.sum())})",
        )
    if (~normal).any():
        ax.hist(
            s[~normal],
            bins=bins,
            alpha=0.6,
            color=ANOMALY_COLOUR,
            label=f"anomaly (n={int((~normal).sum())})",
        )
    ax.axvline(
        threshold,
        color="black",
        linestyle="--",
        linewidth=1.5,
        label=f"threshold = {threshold:.3g}",
    )
    ax.set_xlabel("anomaly score (L1 reconstruction error per window)")
    ax.set_ylabel("windows")
    ax.set_title("Score distribution")
    ax.legend()
    return _save(fig, path)


def roc_curve(scores: np.ndarray, labels: np.ndarray, path: Path, normal_class: int = 1) -> Path:
    """ROC curve of anomaly detection (anomaly = positive) with its AUC in the legend."""
    fpr, tpr, auc = roc_points(scores, labels, normal_class)
    fig, ax = plt.subplots(figsize=(5.5, 5), layout="constrained")
    ax.plot(fpr, tpr, color=ANOMALY_COLOUR, linewidth=2, label=f"ROC (AUC = {auc:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-alarm rate (normal flagged)")
    ax.set_ylabel("detection rate (anomalies flagged)")
    ax.set_title("ROC")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def reconstructions(
    x: np.ndarray,
    recon: np.ndarray,
    labels: np.ndarray,
    class_names: dict[int, str],
    path: Path,
    *,
    n_per_class: int = 2,
    normal_class: int = 1,
) -> Path:
    """True vs reconstructed beats, a row per class present, the error shaded (as the seed)."""
    xa = np.asarray(x, dtype=np.float64)
    ra = np.asarray(recon, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if xa.ndim != 2 or xa.shape != ra.shape:
        raise PlotError(
            f"windows and reconstructions must be equal 2-D arrays: {xa.shape} vs {ra.shape}"
        )
    if y.shape[0] != xa.shape[0]:
        raise PlotError(f"{xa.shape[0]} windows but {y.shape[0]} labels")
    if xa.shape[0] == 0 or n_per_class < 1:
        raise PlotError("nothing to draw")
    classes = [int(c) for c in np.unique(y)]
    cols = n_per_class
    fig, axes = plt.subplots(
        len(classes),
        cols,
        figsize=(3.6 * cols, 2.4 * len(classes)),
        layout="constrained",
        squeeze=False,
        sharex=True,
    )
    t = np.arange(xa.shape[1])
    for row, cls in enumerate(classes):
        idx = np.nonzero(y == cls)[0][:n_per_class]
        name = class_names.get(cls, str(cls))
        for col in range(cols):
            ax = axes[row][col]
            if col >= idx.size:
                ax.axis("off")
                continue
            i = int(idx[col])
            err = float(np.abs(xa[i] - ra[i]).sum())
            ax.plot(t, xa[i], color="black", linewidth=1.2, label="input")
            colour = NORMAL_COLOUR if cls == normal_class else ANOMALY_COLOUR
            ax.plot(t, ra[i], color=colour, linewidth=1.2, label="reconstruction")
            ax.fill_between(t, xa[i], ra[i], color="lightcoral", alpha=0.6, label="error")
            ax.set_title(f"class {cls} {name}: L1 = {err:.1f}", fontsize=9)
            ax.tick_params(labelsize=7)
    handles = [
        Line2D([], [], color="black", label="input"),
        Line2D([], [], color=NORMAL_COLOUR, label="reconstruction (normal)"),
        Line2D([], [], color=ANOMALY_COLOUR, label="reconstruction (anomaly)"),
        Patch(color="lightcoral", alpha=0.6, label="error"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8)
    fig.suptitle("True vs reconstructed beats")
    return _save(fig, path)


def _as_images(a: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 2:
        side = math.isqrt(arr.shape[1])
        if side * side != arr.shape[1]:
            raise PlotError(f"{what}: rows of {arr.shape[1]} values are not square images")
        arr = arr.reshape(arr.shape[0], side, side)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise PlotError(f"{what}: expected [n, h, w] or [n, h*w] images, got {arr.shape}")
    return arr


def _image_rows(rows: list[tuple[str, np.ndarray]], path: Path, title: str) -> Path:
    shapes = {r.shape for _, r in rows}
    if len(shapes) != 1:
        raise PlotError(f"image rows differ in shape: {sorted(shapes)}")
    n = rows[0][1].shape[0]
    height = 1.25 * len(rows) + (0.4 if title else 0.0)
    fig, axes = plt.subplots(
        len(rows),
        n,
        figsize=(1.1 * n + 1.2, 1.25 * len(rows) + (0.4 if title else 0.0)),
        squeeze=False,
    )
    for r, (name, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(images[c], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(
        left=0.9 / (1.1 * n + 1.2),
        right=0.99,
        wspace=0.05,
        hspace=0.1,
        top=1.0 - (0.45 if title else 0.08) / height,
        bottom=0.02,
    )
    return _save(fig, path)


def image_grid(
    originals: np.ndarray, reconstructions: np.ndarray, path: Path, title: str = ""
) -> Path:
    """Originals on the top row, their reconstructions below (pixel values in [0, 1])."""
    o = _as_images(originals, "originals")
    r = _as_images(reconstructions, "reconstructions")
    return _image_rows([("original", o), ("reconstructed", r)], path, title)


def denoising_rows(
    clean: np.ndarray, noisy: np.ndarray, denoised: np.ndarray, path: Path, title: str = ""
) -> Path:
    """Clean, noisy and denoised images as three aligned rows."""
    rows = [
        ("clean", _as_images(clean, "clean")),
        ("noisy", _as_images(noisy, "noisy")),
        ("denoised", _as_images(denoised, "denoised")),
    ]
    return _image_rows(rows, path, title)


def latent_sweep(
    latent_dims: list[int],
    losses: list[float],
    path: Path,
    *,
    loss_name: str = "test reconstruction loss per image",
) -> Path:
    """Test reconstruction loss against latent size (log2 axis)."""
    if len(latent_dims) != len(losses):
        raise PlotError(f"{len(latent_dims)} latent sizes but {len(losses)} losses")
    if not latent_dims:
        raise PlotError("no latent sizes to plot")
    if min(latent_dims) < 1:
        raise PlotError("latent sizes must be positive")
    order = np.argsort(latent_dims)
    dims = np.asarray(latent_dims)[order]
    vals = np.asarray(losses, dtype=np.float64)[order]
    fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
    ax.plot(dims, vals, marker="o", color=NORMAL_COLOUR, label=loss_name)
    for d, v in zip(dims, vals, strict=True):
        ax.annotate(
            f"{v:.3g}",
            (float(d), float(v)),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(int(d)) for d in dims])
    ax.set_xlabel("latent dimension")
    ax.set_ylabel(loss_name)
    ax.set_title("Latent-size sweep")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
