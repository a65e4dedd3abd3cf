"""Threshold calibration: the (1 − fpr) quantile of normal scores, recorded with its numbers."""

from __future__ import annotations

import numpy as np
import pytest

from training.calibrate import Calibration, calibrate
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
