"""Calibrated p-values: the conformal formula, its false-alarm promise, and the model path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monitor.calibration import CalibrationError, PValues
from monitor.engine import Inference, load_model
from monitor.scorer import score_batch
from tests.onnx_models import build_model, windows


def test_p_value_is_one_plus_count_at_least_over_n_plus_one() -> None:
    pv = PValues.from_scores(np.array([3.0, 1.0, 2.0, 2.0]))
    got = pv.p_values(np.array([0.5, 1.0, 2.0, 2.5, 3.0, 9.0]))
    assert got.tolist() == pytest.approx([5 / 5, 5 / 5, 4 / 5, 2 / 5, 2 / 5, 1 / 5])
    assert pv.p_value(float("nan")) == 1.0


@pytest.mark.parametrize("alpha", [0.005, 0.01, 0.05, 0.2])
def test_share_of_normal_p_values_at_most_alpha_is_alpha(alpha: float) -> None:
    """Many calibration sets of n = 199 normal scores, 1,000 new normals each: the share of
    p ≤ α is floor(α (n + 1)) / (n + 1) = α here, within its sampling error (which has a
    calibration-draw part, α(1 − α)/(n + 2) per set, and a binomial part)."""
    rng = np.random.default_rng(int(alpha * 1e4))
    sets, n, m = 200, 199, 1000
    hits = 0
    for _ in range(sets):
        pv = PValues.from_scores(rng.gamma(4.0, 3.0, n))
        hits += int((pv.p_values(rng.gamma(4.0, 3.0, m)) <= alpha).sum())
    share = hits / (sets * m)
    se = np.sqrt(alpha * (1 - alpha) / (n + 2) / sets + alpha * (1 - alpha) / (sets * m))
    assert abs(share - alpha) < 4 * se, (share, alpha, se)


def test_anomalous_scores_get_small_p_values() -> None:
    rng = np.random.default_rng(0)
    pv = PValues.from_scores(rng.normal(10, 1, 999))
    assert (pv.p_values(np.array([20.0, 30.0])) == 1 / 1000).all()


def test_metadata_round_trip_quantile_table_and_missing_scores() -> None:
    assert PValues.from_metadata({}) is None
    assert PValues.from_metadata({"ecg.calibration": '{"method": "fixed"}'}) is None
    scores = np.linspace(0, 1, 101)
    meta = {
        "ecg.calibration": json.dumps(
            {"method": "cross_conformal", "n": 101, "scores": scores.tolist()}
        )
    }
    pv = PValues.from_metadata(meta)
    assert pv is not None and pv.exact and pv.method == "cross_conformal"
    # a quantile table of 11 values standing for n = 1001 scores: counts scale by n / m
    table = {"ecg.calibration": json.dumps({"n": 1001, "scores": np.linspace(0, 1, 11).tolist()})}
    pq = PValues.from_metadata(table)
    assert pq is not None and not pq.exact
    assert pq.p_values(np.array([0.95]))[0] == pytest.approx((1 + 91) / 1002)
    for bad in ('{"scores": [2, 1]}', '{"scores": [1, NaN]}', '{"n": 1, "scores": [1, 2]}', "{"):
        with pytest.raises(CalibrationError):
            PValues.from_metadata({"ecg.calibration": bad})


def test_engine_reads_calibration_scores_and_scorer_gives_each_window_its_p_value(
    tmp_path: Path,
) -> None:
    cal = np.sort(np.random.default_rng(1).uniform(1.0, 30.0, 500))
    meta = {
        "ecg.calibration": json.dumps(
            {"method": "split_conformal", "n": 500, "scores": cal.tolist()}
        )
    }
    model = load_model(build_model(tmp_path / "m.onnx", extra_meta=meta), provider="cpu")
    assert model.info.p_values is not None and model.info.p_values.n == 500
    x = windows(16, anomalous=np.array([3, 7]))
    out = model.run(x)
    s = score_batch(out, 20.0, model.info.p_values)
    assert s.p_value is not None
    want = (1 + np.array([(cal >= v).sum() for v in out.score.astype(np.float64)])) / 501
    assert s.p_value.tolist() == pytest.approx(want.tolist())
    plain = load_model(build_model(tmp_path / "p.onnx"), provider="cpu")
    assert plain.info.p_values is None
    assert score_batch(Inference(x, x, np.zeros(16, np.float32), 0.0), 1.0).p_value is None
