"""Nested repeated cross-validation (training.cv) and the fold-model trainer (training.multifit)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.beats import synthetic_beats
from training.cv import DEPLOYS, SCORES, nested_cv
from training.data import load_dataset
from training.multifit import Recipe, fit_many, score_windows
from training.train import FitConfig, fit

TINY = Recipe(variant="dense", latent_dim=4, epochs=3, batch_size=32, lr=3e-3, patience=2)


def test_nested_cv_holds_every_normal_out_once_per_repeat_and_reports_each_cell() -> None:
    x, y = synthetic_beats(200, seed=4)
    normals, anomalies = x[y == 1], x[y != 1]
    out = nested_cv(TINY, normals, anomalies, repeats=1, outer_k=3, inner_k=2, fpr=0.05)
    assert out["protocol"]["held_out_judgements"] == normals.shape[0]
    assert out["fits"] == 3 * (2 + 1)
    assert set(out["results"]) == {f"{s}/{d}" for s in SCORES for d in DEPLOYS}
    for r in out["results"].values():
        assert 0.0 <= r["fa_at_threshold"] <= 1.0 and 0.0 <= r["recall_at_threshold"] <= 1.0
        assert 0.0 <= r["roc_auc_pooled"] <= 1.0
        assert 0.0 < r["bound_fa_upper"] <= 0.05
    json.dumps(out)  # JSON-ready


def test_fit_many_gives_each_model_its_own_data_and_early_stopping() -> None:
    x, _ = synthetic_beats(80, seed=1)
    sets = [np.arange(0, 40), np.arange(40, 80)]
    fitted = fit_many(TINY, x, sets, [np.arange(40, 50), np.arange(0, 10)], seed=3)
    assert len(fitted) == 2 and all(1 <= f.best_epoch <= f.epochs_run for f in fitted)
    a, b = (score_windows(f.model, x[:5]) for f in fitted)
    assert not np.allclose(a, b)
    fixed = fit_many(TINY, x, sets[:1], [np.zeros(0, np.int64)], fixed_epochs=[2])[0]
    assert fixed.epochs_run == 2


def test_standardised_score_weights_are_baked_into_the_model_score() -> None:
    x, _ = synthetic_beats(60, seed=2)
    model = fit_many(TINY, x, [np.arange(60)], [np.arange(10)])[0].model
    plain = score_windows(model, x)
    w = model.standardise_score(torch.from_numpy(x))
    assert model.standardised and w.mean().item() == pytest.approx(1.0)
    xp = model.prepare(torch.from_numpy(x))
    with torch.no_grad():
        err = (xp - model.reconstruct_prepared(xp)).abs()
    np.testing.assert_allclose(score_windows(model, x), (err * w).sum(1).numpy(), rtol=1e-5)
    assert not np.allclose(plain, score_windows(model, x))


def test_fit_calibrates_cross_conformally_on_every_normal_by_default(tmp_path: Path) -> None:
    ds = load_dataset("synthetic:300", seed=0)
    cfg = FitConfig("dense", latent_dim=4, epochs=2, batch_size=64, lr=3e-3, folds=3)
    run = fit(cfg, ds, tmp_path / "r", progress=False, plots=False)
    cal = json.loads((run / "calibration.json").read_text())
    n = ds.train.shape[0] + ds.val.shape[0]
    assert cal["method"] == "cross_conformal" and cal["n"] == n and len(cal["scores"]) == n
    assert cal["scores"] == sorted(cal["scores"]) and cal["bound"]["folds"] == 3
    k = cal["bound"]["rank"]
    assert cal["threshold"] == cal["scores"][k - 1] and "cross-conformal" in cal["why"]


def test_latent_distance_adds_the_codes_mahalanobis_distance_scaled_to_the_l1_score() -> None:
    """`set_latent_distance`: score = L1 + w · ‖(h − μ) W‖ with μ, W from the training codes;
    on those windows the term's median is the L1 score's median; a window whose code lies far
    from the normals' codes gains more than the training windows do."""
    x, y = synthetic_beats(120, seed=5)
    normals = x[y == 1]
    model = fit_many(TINY, normals, [np.arange(normals.shape[0])], [np.arange(10)])[0].model
    plain = score_windows(model, normals)
    model.set_latent_distance(torch.from_numpy(normals))
    assert model.latent_scored
    gained = score_windows(model, normals) - plain
    assert np.median(gained) == pytest.approx(np.median(plain), rel=0.05)
    with torch.no_grad():
        h = model.encode(model.prepare(torch.from_numpy(normals))).double().numpy()
    cov = np.cov(h.T) + 1e-3 * np.cov(h.T).diagonal().mean() * np.eye(h.shape[1])
    d = h - h.mean(0)
    maha = np.sqrt(np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d))
    np.testing.assert_allclose(gained, float(model.latent_weight) * maha, rtol=1e-3, atol=1e-3)
    far = normals[:4] * np.linspace(1.0, -1.0, normals.shape[1], dtype=np.float32)  # odd shapes
    with torch.no_grad():
        far_plain = (
            model.score(torch.from_numpy(far))[0].numpy()
            - float(model.latent_weight)
            * model._latent_distance(model.encode(model.prepare(torch.from_numpy(far)))).numpy()
        )
    assert (score_windows(model, far) - far_plain > np.median(gained)).all()
