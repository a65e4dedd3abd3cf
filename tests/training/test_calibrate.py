"""Threshold calibration: the (1 − fpr) quantile of normal scores, recorded with its numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.calibrate import (
    Calibration,
    calibrate,
    conformal_bound,
    conformal_rank,
    conformal_threshold,
    cross_conformal,
    kfold_indices,
)
from training.errors import TrainingError


def test_threshold_is_the_1_minus_fpr_quantile_rounded_up_to_an_observed_score() -> None:
    scores = np.arange(1, 1001, dtype=np.float64)  # 1..1000
    cal = calibrate(scores, fpr=0.01, method="quantile")
    assert cal.threshold == 991.0  # ceil(0.99 * 999) -> index 990 -> score 991
    assert cal.quantile == pytest.approx(0.99) and cal.n == 1000 and cal.fpr == 0.01
    assert (scores > cal.threshold).mean() <= 0.01
    assert calibrate(scores, fpr=0.1, method="quantile").threshold == 901.0


def test_few_scores_give_their_maximum_and_say_so() -> None:
    cal = calibrate(np.array([3.0, 1.0, 2.0]), fpr=0.01, method="quantile")
    assert cal.threshold == 3.0
    assert "maximum" in cal.to_json()["note"]
    assert "note" not in calibrate(np.arange(200.0), fpr=0.01, method="quantile").to_json()


def test_json_round_trip() -> None:
    cal = calibrate(np.linspace(0, 1, 50), fpr=0.05, method="quantile")
    data = cal.to_json()
    assert data["method"] == "normal_quantile"
    assert Calibration.from_json(data) == cal


@pytest.mark.parametrize(
    ("scores", "fpr"),
    [
        (np.array([]), 0.01),
        (np.array([1.0, np.nan]), 0.01),
        (np.array([1.0]), 0.0),
        (np.array([1.0]), 1.0),
    ],
)
def test_bad_inputs(scores: np.ndarray, fpr: float) -> None:
    with pytest.raises(TrainingError):
        calibrate(scores, fpr)


def test_lognormal_method_estimates_the_quantile_and_shrugs_off_one_outlier() -> None:
    rng = np.random.default_rng(0)
    scores = np.exp(rng.normal(2.0, 0.3, 5000))
    cal = calibrate(scores, fpr=0.01, method="lognormal")
    assert cal.method == "normal_lognormal_mad"
    assert cal.threshold == pytest.approx(np.exp(2.0 + 2.3263 * 0.3), rel=0.03)
    small = scores[:40]
    with_outlier = np.r_[small, 500.0]
    # the empirical quantile is the max
    assert calibrate(with_outlier, 0.01, method="quantile").threshold == 500.0
    robust = calibrate(with_outlier, 0.01, method="lognormal").threshold
    assert robust == pytest.approx(calibrate(small, 0.01, method="lognormal").threshold, rel=0.1)
    with pytest.raises(TrainingError, match="unknown calibration"):
        calibrate(scores, 0.01, method="max")


def test_auto_uses_the_empirical_quantile_only_when_enough_windows_lie_above_it() -> None:
    rng = np.random.default_rng(1)
    scores = np.exp(rng.normal(2.0, 0.3, 1000))
    # n * fpr = 10 >= 5: the empirical quantile, exactly as method="quantile" gives it
    assert calibrate(scores, 0.01) == calibrate(scores, 0.01, method="quantile")
    # n * fpr = 0.4 < 5: the log-normal fit, which a single outlier does not move
    small = np.r_[scores[:40], 500.0]
    auto = calibrate(small, 0.01)
    assert auto.method == "normal_lognormal_mad"
    assert auto == calibrate(small, 0.01, method="lognormal")
    assert auto.threshold < 100.0


# ---------------------------------------------------------------- conformal


def test_conformal_threshold_is_the_ceil_n_plus_1_rank_and_states_its_bound() -> None:
    scores = np.arange(1, 300, dtype=np.float64)[::-1]  # 299 scores, unsorted
    cal = calibrate(scores, fpr=0.01, method="conformal")
    assert cal.method == "split_conformal"
    assert cal.threshold == 297.0  # k = ceil(300 * 0.99) = 297
    assert cal.bound["rank"] == 297 and cal.bound["holds"]
    assert cal.bound["fa_upper"] == pytest.approx(3 / 300) and cal.bound["fa_upper"] <= 0.01
    assert cal.bound["fa_lower"] == pytest.approx(0.01 - 1 / 300)
    assert list(cal.scores) == sorted(scores.tolist())
    assert Calibration.from_json(cal.to_json()) == cal
    assert conformal_rank(299, 0.01) == 297 and conformal_rank(99, 0.01) == 99


def test_too_few_scores_for_a_conformal_threshold_say_the_bound_does_not_hold() -> None:
    cal = calibrate(np.linspace(0, 1, 50), fpr=0.01, method="conformal")
    assert cal.threshold == 1.0 and not cal.bound["holds"]
    assert cal.bound["fa_upper"] == pytest.approx(1 / 51)


def test_cross_conformal_bound_is_barber_et_al_cv_plus() -> None:
    b = conformal_bound(292, 0.01, method="cross-conformal", folds=5)
    extra = min(2 * (1 - 1 / 5) / (292 / 5 + 1), (1 - 5 / 292) / 6)
    assert b["cv_plus_fa_upper"] == pytest.approx(0.02 + extra)
    with pytest.raises(TrainingError):
        conformal_bound(292, 0.01, method="cross-conformal", folds=1)


def test_split_conformal_false_alarm_rate_on_new_exchangeable_normals_is_within_the_bound() -> None:
    # 4,000 calibrations of n = 199 scores, each judged on one new score from the same law:
    # P(new > threshold) = (n + 1 - k) / (n + 1) = 2 / 200 exactly.
    rng = np.random.default_rng(3)
    trials, n = 4000, 199
    cal = rng.lognormal(2.0, 0.4, (trials, n))
    new = rng.lognormal(2.0, 0.4, trials)
    thresholds = np.array([conformal_threshold(c, 0.01)[0] for c in cal])
    rate = float((new > thresholds).mean())
    se = np.sqrt(0.01 * 0.99 / trials)
    assert abs(rate - 2 / 200) < 4 * se


def test_kfold_indices_partition_and_keep_groups_whole() -> None:
    folds = kfold_indices(23, 5, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(23))
    assert {f.size for f in folds} <= {4, 5}
    groups = np.repeat(
        ["100", "101", "102", "103", "104", "105", "106"], [50, 40, 30, 30, 20, 10, 5]
    )
    folds = kfold_indices(groups.size, 3, groups=groups, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(groups.size))
    owners = [set(groups[f].tolist()) for f in folds]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not owners[a] & owners[b]
    with pytest.raises(TrainingError):
        kfold_indices(10, 5, groups=np.zeros(10))
    with pytest.raises(TrainingError):
        kfold_indices(10, 1)


class _MeanModel:
    """A 'model' that scores by distance from the mean of its training windows."""

    def __init__(self, x: np.ndarray) -> None:
        self.mean = x.mean(axis=0)
        self.seen = {tuple(row) for row in x.tolist()}

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.abs(x - self.mean).sum(axis=1)


def test_cross_conformal_scores_every_beat_with_a_model_that_never_saw_it() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    groups = np.repeat(np.arange(12), 5)
    cc = cross_conformal(lambda train, f: _MeanModel(train), x, 4, groups=groups, seed=2)
    assert np.isfinite(cc.oof_scores).all() and len(cc.models) == 4
    for i in range(60):
        model = cc.models[cc.fold_of[i]]
        assert tuple(x[i].tolist()) not in model.seen
        assert cc.oof_scores[i] == pytest.approx(model.score(x[i : i + 1])[0])
    cal = cc.calibration(0.05)
    assert cal.method == "cross_conformal" and cal.bound["folds"] == 4 and cal.n == 60
    p = cc.cv_plus_p_values(x[:3])
    assert ((p > 0) & (p <= 1)).all()
    assert cc.ensemble_score(x[:3]).shape == (3,)


def test_the_false_alarm_rate_of_one_calibration_follows_the_reported_beta_law() -> None:
    """One calibration of n = 292 normals: its false-alarm rate on new normals (exactly known
    here, the scores being Exp(1)) is spread as `fa_given_calibration` says: 4,000 draws give
    the reported mean, 5 % / 95 % quantiles and share within ±0.5 pp of the target."""
    rng = np.random.default_rng(3)
    n, alpha = 292, 0.01
    law = conformal_bound(n, alpha)["fa_given_calibration"]
    fa = np.empty(4000)
    for i in range(fa.size):
        threshold, _ = conformal_threshold(rng.exponential(size=n), alpha)
        fa[i] = math.exp(-threshold)  # P(Exp(1) > threshold)
    assert law["distribution"] == "Beta(2, 291)"
    assert fa.mean() == pytest.approx(law["mean"], rel=0.05)
    assert np.quantile(fa, 0.05) == pytest.approx(law["q05"], rel=0.15)
    assert np.quantile(fa, 0.95) == pytest.approx(law["q95"], rel=0.05)
    assert float((np.abs(fa - alpha) <= 0.005).mean()) == pytest.approx(law["p_within"], abs=0.03)
