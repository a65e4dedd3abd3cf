"""ONNX export: the model contract, parity with torch, metadata, scoring without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from monitor.beats import zscore
from training import export as export_module
from training.data import Dataset, load_dataset
from training.detector import Detector
from training.errors import ExportError
from training.export import export_run
from training.models import MODELS
from training.onnx_scoring import REQUIRED_METADATA, OnnxModel
from training.train import FitConfig, fit


@pytest.fixture(scope="module")
def small() -> Dataset:
    return load_dataset("synthetic:120", seed=0)


def _run(variant: str, data: Dataset, out: Path) -> Path:
    latent = 4 if variant == "lstm" else 6
    cfg = FitConfig(variant, latent_dim=latent, epochs=1, batch_size=64, lr=1e-3)
    return fit(cfg, data, out, progress=False, plots=False)


@pytest.fixture(scope="module")
def dense_onnx(small: Dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    run_dir = _run("dense", small, root / "run")
    return run_dir, export_run(run_dir, root / "dense.onnx")


@pytest.mark.parametrize("variant", list(MODELS))
def test_every_ecg_variant_exports_with_dynamic_batch_and_matches_torch(
    variant: str, small: Dataset, tmp_path: Path
) -> None:
    run_dir = _run(variant, small, tmp_path / "run")
    path = export_run(run_dir, tmp_path / f"{variant}.onnx")
    model = OnnxModel(path)
    assert model.variant == variant
    want_scores, want_recon = Detector.load(run_dir).score_and_reconstruct(small.test_x)
    got_scores, got_recon = model.score(small.test_x, batch=13)
    np.testing.assert_allclose(got_recon, want_recon, atol=1e-4)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4)


def test_metadata_follows_the_model_contract(dense_onnx: tuple[Path, Path]) -> None:
    run_dir, path = dense_onnx
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert set(REQUIRED_METADATA) <= set(meta)
    assert meta["ecg.window_length"] == "140" and meta["ecg.score"] == "l1_sum"
    assert meta["ecg.preprocess"] == "none" and meta["ecg.graph_preprocess"] == "zscore"
    assert meta["ecg.model_name"] == "synthetic-dense"
    calibration = json.loads((run_dir / "calibration.json").read_text())
    assert json.loads(meta["ecg.calibration"]) == calibration
    assert float(meta["ecg.threshold"]) == calibration["threshold"]
    trained_on = json.loads(meta["ecg.trained_on"])
    assert trained_on["name"] == "synthetic" and len(trained_on["sha256"]) == 64
    stamp, digest = meta["ecg.model_version"].split("-")
    assert len(stamp) == 14 and stamp.endswith("Z") and len(digest) == 8
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    inputs = {i.name: i for i in proto.graph.input}
    dims = inputs["windows"].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 140
    assert [o.name for o in proto.graph.output] == ["reconstruction", "score"]


def test_plain_onnxruntime_session_scores_raw_amplitude_windows(
    dense_onnx: tuple[Path, Path], small: Dataset
) -> None:
    """z-normalisation is in the graph: gain and offset do not change the score."""
    _, path = dense_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = small.test_x[:5]
    recon, score = session.run(None, {"windows": x})
    _, score2 = session.run(None, {"windows": (x * 250.0 + 1000.0).astype(np.float32)})
    np.testing.assert_allclose(score2, score, rtol=1e-3)
    np.testing.assert_allclose(score, np.abs(x - recon).sum(axis=1), rtol=1e-3)


def test_onnx_file_scores_windows_with_torch_unavailable(dense_onnx: tuple[Path, Path]) -> None:
    _, path = dense_onnx
    code = f"""
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from monitor.beats import synthetic_beats
from training.onnx_scoring import OnnxModel
model = OnnxModel({str(path)!r})
x, y = synthetic_beats(9, seed=3)
scores, recon = model.score(x)
assert scores.shape == (9,) and recon.shape == (9, 140)
assert "torch" not in sys.modules
print("ok", model.model_name)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "ok synthetic-dense" in result.stdout


def test_export_fails_loudly_when_onnx_and_torch_disagree(
    dense_onnx: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, _ = dense_onnx
    monkeypatch.setattr(export_module, "ATOL", -1.0)
    with pytest.raises(ExportError, match="differs from torch"):
        export_run(run_dir, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_onnx_model_applies_the_preprocessing_its_metadata_names(tmp_path: Path) -> None:
    """A model whose ecg.preprocess is "zscore" is scored on z-normalised windows, as the
    daemon feeds it; "none" gets the windows as they are."""
    from tests.onnx_models import build_model, windows  # noqa: PLC0415

    x = 3.0 * windows(8) + 1.0  # raw amplitudes: z-normalisation changes them
    named = OnnxModel(build_model(tmp_path / "z.onnx", preprocess="zscore"))
    plain = OnnxModel(build_model(tmp_path / "n.onnx"))
    scores, _ = named.score(x)
    np.testing.assert_allclose(scores, plain.score(zscore(x))[0], rtol=1e-6)
    assert not np.allclose(plain.score(x)[0], scores)


def test_a_latent_distance_score_exports_and_says_so(small: Dataset, tmp_path: Path) -> None:
    """`--score latent`: the exported graph computes the L1 sum plus the latent term (parity
    with torch through a checkpoint round trip), `ecg.score` names it, and the plain models'
    graphs carry no op for it."""
    cfg = FitConfig("dense", latent_dim=6, epochs=1, batch_size=64, lr=1e-3, score="latent")
    run_dir = fit(cfg, small, tmp_path / "run", progress=False, plots=False)
    detector = Detector.load(run_dir)
    assert detector.model.latent_scored
    path = export_run(run_dir, tmp_path / "latent.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["ecg.score"] == "l1_sum_plus_latent_distance"
    want_scores, _ = detector.score_and_reconstruct(small.test_x)
    got_scores, _ = OnnxModel(path).score(small.test_x, batch=13)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4)
    plain = export_run(_run("dense", small, tmp_path / "plain"), tmp_path / "plain.onnx")
    ops = lambda p: {n.op_type for n in onnx.load(str(p)).graph.node}  # noqa: E731
    assert "MatMul" in ops(path) - ops(plain)  # the whitening; plain dense layers are Gemm


def test_an_ensemble_of_the_fold_models_deploys_and_exports(small: Dataset, tmp_path: Path) -> None:
    """`--deploy ensemble`: the K cross-conformal fold models are the deployed model (mean of
    their scores, mean reconstruction), through checkpoint, Detector and ONNX; the metadata
    names the members' variant, their number and the score."""
    cfg = FitConfig("dense", latent_dim=6, epochs=1, batch_size=64, lr=1e-3, folds=3,
                    deploy="ensemble")  # fmt: skip
    run_dir = fit(cfg, small, tmp_path / "run", progress=False, plots=False)
    detector = Detector.load(run_dir)
    members = list(detector.model.members)  # type: ignore[attr-defined]
    assert detector.model.variant == "ensemble" and len(members) == 3
    assert "ensemble of the 3 fold models" in detector.calibration.extra["deployed"]
    x = torch.from_numpy(small.test_x)
    with torch.no_grad():
        each = torch.stack([m.score(x)[0] for m in members])
    assert not torch.allclose(each[0], each[1])  # three different models
    np.testing.assert_allclose(detector.score(small.test_x), each.mean(0).numpy(), rtol=1e-5)
    path = export_run(run_dir, tmp_path / "ensemble.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["ecg.variant"] == "dense" and meta["ecg.ensemble"] == "3"
    assert meta["ecg.score"] == "mean_of_3(l1_sum)" and meta["ecg.model_name"] == "synthetic-dense"
    got, _ = OnnxModel(path).score(small.test_x, batch=13)
    np.testing.assert_allclose(got, each.mean(0).numpy(), rtol=1e-4)
