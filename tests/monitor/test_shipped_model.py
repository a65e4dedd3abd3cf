"""The shipped default windows model: trained on real ECG (ECG5000), loads in the daemon's
engine, carries calibration scores for p-values; the demo picks the model matching its beats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitor.beats import NORMAL_CLASS, read_ucr
from monitor.config import load_config
from monitor.demo import DEFAULT_MODEL, ECG5000_MODEL, default_model
from monitor.engine import load_model
from monitor.scorer import score_batch

ROOT = Path(__file__).resolve().parents[2]
TRAIN = Path("/work/shared/data/ECG5000/ECG5000_TRAIN.arff")


def test_shipped_config_points_at_the_ecg5000_model_and_it_loads_with_p_values() -> None:
    cfg = load_config(ROOT / "configs" / "monitor.toml")
    assert Path(cfg.model.path) == ECG5000_MODEL.resolve()
    model = load_model(cfg.model.path, provider="cpu")
    meta = model.info.metadata
    assert model.info.name == "ecg5000-vae" and model.info.window_length == 140
    assert '"name": "ECG5000"' in meta["ecg.trained_on"]
    pv = model.info.p_values
    assert pv is not None and pv.exact and pv.method == "cross_conformal"
    assert pv.n >= 250  # every TRAIN normal the fit used is a calibration score


def test_demo_uses_the_synthetic_model_for_synthetic_beats_and_ecg5000_for_replay() -> None:
    assert default_model("synthetic") == DEFAULT_MODEL and DEFAULT_MODEL.is_file()
    assert default_model("synthetic:500") == DEFAULT_MODEL
    assert default_model(f"ucr:{TRAIN}") == ECG5000_MODEL and ECG5000_MODEL.is_file()


@pytest.mark.skipif(not TRAIN.is_file(), reason="ECG5000 data not present")
def test_ecg5000_model_separates_real_beats() -> None:
    x, y = read_ucr(TRAIN)
    model = load_model(ECG5000_MODEL, provider="cpu")
    s = score_batch(model.run(x), model.info.threshold, model.info.p_values)
    normal = y == NORMAL_CLASS
    # TRAIN normals are its training data: few alarms (measured: 1 of 292). At the 1 %
    # threshold most anomalies alarm (measured: 86 %; the calibration normals' own tail sets
    # it high), at p <= 0.05 nearly all do (measured: 98.6 %).
    assert s.anomalous[normal].mean() < 0.03
    assert s.anomalous[~normal].mean() > 0.75
    assert s.p_value is not None
    assert (s.p_value[~normal] <= 0.05).mean() > 0.95
    assert np.median(s.p_value[~normal]) < 0.05 < np.median(s.p_value[normal])
