"""Plots write real PNGs of the expected pixel size and refuse inputs that do not fit."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from training import plots
from training.errors import TrainingError

CLASS_NAMES = {1: "normal", 2: "R-on-T PVC", 3: "PVC"}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


@pytest.fixture
def detection() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(60, dtype=np.int64), rng.integers(2, 4, 30)]
    scores = np.r_[rng.normal(10.0, 2.0, 60), rng.normal(25.0, 4.0, 30)]
    return scores, labels


def test_loss_curves_png(tmp_path: Path) -> None:
    out = plots.loss_curves({"train": [3.0, 2.0, 1.5], "val": [3.5, 2.5, 2.0]}, tmp_path / "a.png")
    assert out.stat().st_size > 5_000
    assert png_size(out) == (700, 450)


def test_loss_curves_rejects_empty_history(tmp_path: Path) -> None:
    with pytest.raises(TrainingError):
        plots.loss_curves({"train": []}, tmp_path / "a.png")


def test_score_histogram_and_roc(tmp_path: Path, detection: tuple[np.ndarray, np.ndarray]) -> None:
    scores, labels = detection
    hist = plots.score_histogram(scores, labels, 15.0, tmp_path / "sub" / "hist.png")
    roc = plots.roc_curve(scores, labels, tmp_path / "roc.png")
    assert png_size(hist) == (700, 450)
    assert png_size(roc) == (550, 500)
    assert hist.stat().st_size > 5_000 and roc.stat().st_size > 5_000


def test_mismatched_scores_and_labels_fail(
    tmp_path: Path, detection: tuple[np.ndarray, np.ndarray]
) -> None:
    scores, labels = detection
    with pytest.raises(plots.PlotError, match="differ in length"):
        plots.score_histogram(scores[:-1], labels, 15.0, tmp_path / "h.png")
    with pytest.raises(plots.PlotError):
        plots.roc_curve(scores, labels[:-3], tmp_path / "r.png")
    assert not (tmp_path / "h.png").exists()


def test_roc_needs_both_classes(tmp_path: Path) -> None:
    with pytest.raises(plots.PlotError, match="both"):
        plots.roc_curve(np.arange(5.0), np.ones(5, dtype=np.int64), tmp_path / "r.png")


def test_roc_points_auc_matches_pairwise_count() -> None:
    """AUC = P(anomaly score > normal score), ties counted half."""
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=200), 1)  # rounding forces ties
    labels = np.where(rng.random(200) < 0.3, 2, 1)
    _, _, auc = plots.roc_points(scores, labels)
    pos, neg = scores[labels != 1], scores[labels == 1]
    diff = pos[:, None] - neg[None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert auc == pytest.approx(expected, abs=1e-12)


def test_reconstructions_grid_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 140))
    labels = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3])
    out = plots.reconstructions(x, x + 0.1, labels, CLASS_NAMES, tmp_path / "rec.png")
    # a row per class present (3), n_per_class = 2 columns
    assert png_size(out) == (720, 720)
    out3 = plots.reconstructions(x, x, labels, CLASS_NAMES, tmp_path / "r3.png", n_per_class=3)
    assert png_size(out3) == (1080, 720)


def test_reconstructions_rejects_mismatch(tmp_path: Path) -> None:
    x = np.zeros((4, 140))
    with pytest.raises(plots.PlotError):
        plots.reconstructions(x, np.zeros((4, 139)), np.ones(4), CLASS_NAMES, tmp_path / "r.png")
    with pytest.raises(plots.PlotError):
        plots.reconstructions(x, x, np.ones(3), CLASS_NAMES, tmp_path / "r.png")


def test_image_grid_and_denoising_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    imgs = rng.random((8, 28, 28))
    grid = plots.image_grid(imgs, imgs.reshape(8, 784), tmp_path / "g.png", title="latent 8")
    rows = plots.denoising_rows(imgs, imgs, imgs, tmp_path / "d.png")
    assert png_size(grid)[0] == png_size(rows)[0] == round(100 * (1.1 * 8 + 1.2))
    assert png_size(rows)[1] > png_size(grid)[1]


def test_image_plots_reject_bad_shapes(tmp_path: Path) -> None:
    imgs = np.zeros((8, 28, 28))
    with pytest.raises(plots.PlotError):
        plots.image_grid(imgs, imgs[:7], tmp_path / "g.png")
    with pytest.raises(plots.PlotError, match="square"):
        plots.image_grid(np.zeros((8, 783)), np.zeros((8, 783)), tmp_path / "g.png")
    with pytest.raises(plots.PlotError):
        plots.denoising_rows(imgs, imgs, np.zeros((8, 14, 14)), tmp_path / "d.png")


def test_latent_sweep(tmp_path: Path) -> None:
    out = plots.latent_sweep([8, 2, 4], [30.0, 50.0, 40.0], tmp_path / "s.png")
    assert png_size(out) == (600, 450)
    with pytest.raises(plots.PlotError):
        plots.latent_sweep([2, 4], [1.0], tmp_path / "s2.png")
