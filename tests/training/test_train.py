"""The batched trainer: run directory contents, early stopping, seeding, recipes; the detector."""

from __future__ import annotations

import argparse
import inspect
import json
import tomllib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import Dataset, load_dataset
from training.detector import Detector, load_checkpoint, resolve_device
from training.errors import TrainingError
from training.models import MODELS
from training.train import RECIPES, FitConfig, config_from_args, configure, fit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small() -> Dataset:
    return load_dataset("synthetic:300", seed=0)


@pytest.fixture(scope="module")
def run_dir(small: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = FitConfig("dense", latent_dim=8, epochs=6, batch_size=32, lr=3e-3, patience=3)
    return fit(cfg, small, tmp_path_factory.mktemp("run") / "dense", progress=False)


def test_run_directory_holds_everything_to_rebuild_and_judge_the_model(run_dir: Path) -> None:
    for name in (
        "checkpoint.pt",
        "config.json",
        "history.json",
        "calibration.json",
        "metrics.json",
    ):
        assert (run_dir / name).is_file(), name
    for plot in ("loss_curves", "score_histogram", "roc_curve", "reconstructions"):
        assert (run_dir / "plots" / f"{plot}.png").stat().st_size > 1000
    ckpt = load_checkpoint(run_dir)
    assert ckpt["model"]["variant"] == "dense" and ckpt["model"]["input_dim"] == 140
    assert ckpt["config"]["epochs"] == 6 and ckpt["data"]["name"] == "synthetic"
    assert len(ckpt["data"]["sha256"]) == 64
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["train"]) == len(history["val"]) == ckpt["epochs_run"]
    assert ckpt["best_val_loss"] == min(history["val"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["roc_auc"] <= 1.0 and metrics["variant"] == "dense"


def test_best_weights_are_restored(run_dir: Path, small: Dataset) -> None:
    detector = Detector.load(run_dir)
    ckpt = load_checkpoint(run_dir)
    assert float(detector.score(small.val).mean()) == pytest.approx(ckpt["best_val_loss"], rel=1e-5)


def test_early_stopping_stops_after_patience_epochs_without_improvement(
    small: Dataset, tmp_path: Path
) -> None:
    # lr so large the validation loss cannot keep improving
    cfg = FitConfig("dense", latent_dim=4, epochs=40, batch_size=64, lr=5.0, patience=2)
    ckpt = load_checkpoint(fit(cfg, small, tmp_path / "r", progress=False, plots=False))
    assert ckpt["epochs_run"] == ckpt["best_epoch"] + 2 < 40


def test_training_is_seeded(small: Dataset, tmp_path: Path) -> None:
    cfg = FitConfig("denoising", latent_dim=4, epochs=2, batch_size=64, lr=1e-3, seed=7)
    a = json.loads(
        (fit(cfg, small, tmp_path / "a", progress=False, plots=False) / "history.json").read_text()
    )
    b = json.loads(
        (fit(cfg, small, tmp_path / "b", progress=False, plots=False) / "history.json").read_text()
    )
    assert a == b


def test_detector_contract(run_dir: Path, small: Dataset) -> None:
    detector = Detector.load(run_dir)
    scores = detector.score(small.test_x)
    assert scores.dtype == np.float32 and scores.shape == (len(small.test_x),)
    recon = detector.reconstruct(small.test_x[:3])
    assert recon.shape == (3, 140)
    with torch.no_grad():
        want, _ = detector.model.score(torch.from_numpy(small.test_x[:3]))
    np.testing.assert_allclose(scores[:3], want.numpy(), rtol=1e-5)
    cal = detector.infer_threshold(small.val, fpr=0.1, method="quantile")
    assert cal.threshold == pytest.approx(
        float(np.quantile(detector.score(small.val), 0.9, method="higher"))
    )
    pred = detector.predict(small.test_x)
    assert pred.threshold == cal.threshold
    np.testing.assert_array_equal(pred.is_anomaly, pred.scores > cal.threshold)


def test_fit_config_validation() -> None:
    with pytest.raises(TrainingError, match="unknown variant"):
        FitConfig("gru", 8, 1, 1, 1e-3)
    with pytest.raises(TrainingError, match="epochs"):
        FitConfig("dense", 8, 0, 1, 1e-3)
    with pytest.raises(TrainingError, match="fpr"):
        FitConfig("dense", 8, 1, 1, 1e-3, fpr=0.0)
    assert FitConfig.for_variant("lstm").latent_dim == RECIPES["lstm"]["latent_dim"]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(["--data", "synthetic", *argv])


def test_recipe_file_then_cli_flags(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('variant = "sparse-l1"\nepochs = 9\nlr = 0.01\n[options]\nl1 = 0.2\n')
    cfg = config_from_args(_args("--config", str(recipe), "--epochs", "3", "--option", "hidden=32"))
    assert (cfg.variant, cfg.epochs, cfg.lr) == ("sparse-l1", 3, 0.01)
    assert cfg.options == {"l1": 0.2, "hidden": 32}
    bad = tmp_path / "bad.toml"
    bad.write_text("epoch = 3\n")
    with pytest.raises(TrainingError, match="unknown recipe keys"):
        config_from_args(_args("--variant", "dense", "--config", str(bad)))


@pytest.mark.parametrize("variant", list(RECIPES))
def test_shipped_recipes_match_the_built_in_defaults(variant: str) -> None:
    recipe = tomllib.loads((ROOT / "configs" / f"train-{variant}.toml").read_text())
    cfg = config_from_args(_args("--config", str(ROOT / "configs" / f"train-{variant}.toml")))
    assert recipe["variant"] == variant
    default = asdict(FitConfig.for_variant(variant))
    assert {k: v for k, v in asdict(cfg).items() if k != "options"} == {
        k: v for k, v in default.items() if k != "options"
    }


def test_device_choice() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TrainingError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("variant", sorted(RECIPES))
def test_shipped_recipe_file_matches_the_builtin_recipe(variant: str) -> None:
    """configs/train-<variant>.toml and RECIPES are the same recipe, so neither drifts."""
    path = Path(__file__).resolve().parents[2] / "configs" / f"train-{variant}.toml"
    recipe = tomllib.loads(path.read_text())
    assert recipe.pop("variant") == variant
    want = FitConfig.for_variant(variant)
    # options spell out the model's own defaults (keyword arguments of its constructor)
    model_defaults = _keyword_defaults(MODELS[variant])
    for key, value in recipe.pop("options", {}).items():
        assert model_defaults[key] == value, key
    for key, value in recipe.items():
        assert getattr(want, key) == value, key
    for key in RECIPES[variant]:
        assert key in recipe, f"{path.name} lacks {key}"


def _keyword_defaults(cls: type) -> dict[str, object]:
    out: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for name, param in inspect.signature(init).parameters.items():
            if param.default is not inspect.Parameter.empty:
                out[name] = param.default
    return out


def test_an_early_stop_closes_the_bar_and_says_why(
    small: Dataset, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cfg = FitConfig("dense", latent_dim=4, epochs=40, batch_size=64, lr=5.0, patience=2)
    run = fit(cfg, small, tmp_path / "r", progress=True, plots=False)
    record = json.loads((run / "config.json").read_text())
    err = capfd.readouterr().err
    line = (
        f"early stop at epoch {record['epochs_run']}: validation loss did not improve for 2 "
        f"epochs; best {record['best_val_loss']:.4g} at epoch {record['best_epoch']}"
    )
    assert line in err, err
    assert record["stopped_early"] is True
    # the bar was closed at the epoch that stopped it, then the line starts a line of its own
    assert f"{record['epochs_run']}/40 [" in err.split(line)[0].rsplit("\r", 1)[-1]
    assert f"\n{line}" in err


def test_a_run_to_the_last_epoch_prints_no_early_stop(
    small: Dataset, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cfg = FitConfig("dense", latent_dim=4, epochs=2, batch_size=64, lr=1e-3, patience=10)
    run = fit(cfg, small, tmp_path / "r", progress=True, plots=False)
    assert "early stop" not in capfd.readouterr().err
    assert json.loads((run / "config.json").read_text())["stopped_early"] is False
