"""int8 quantisation: the AUC check decides whether the file is written; the contract holds."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.cli import main as cli_main
from training.data import load_dataset
from training.errors import TrainingError
from training.export import export_run
from training.quantize import QuantReport, quantize_checked, quantize_int8
from training.train import FitConfig, fit

DATA = "synthetic:600"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dense model trained briefly on synthetic beats and exported by `ecg-train export`."""
    tmp = tmp_path_factory.mktemp("quant")
    cfg = FitConfig.for_variant("dense", epochs=15, device="cpu", latent_dim=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `ecg-train fit` does: small models, shared cores
    try:
        run_dir = fit(cfg, load_dataset(DATA), tmp / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    return export_run(run_dir, tmp / "dense.onnx")


@pytest.fixture(scope="module")
def accepted(fp32_model: Path, tmp_path_factory: pytest.TempPathFactory) -> QuantReport:
    out = tmp_path_factory.mktemp("q") / "dense.int8.onnx"
    return quantize_checked(fp32_model, DATA, out, max_auc_drop=1.0, timing_s=0.05)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_report_drop_is_fp32_minus_int8_auc(accepted: QuantReport) -> None:
    assert accepted.drop == pytest.approx(accepted.fp32_auc - accepted.int8_auc, abs=1e-12)
    assert 0.5 < accepted.fp32_auc <= 1.0
    assert accepted.speedup == pytest.approx(accepted.int8_windows_s / accepted.fp32_windows_s)
    assert accepted.n_test > 0 and accepted.n_val > 0


def test_accepted_model_is_int8_and_keeps_the_model_contract(
    accepted: QuantReport, fp32_model: Path
) -> None:
    assert accepted.accepted and accepted.out is not None
    out = Path(accepted.out)
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"}
    sess = _session(out)
    assert [i.name for i in sess.get_inputs()] == ["windows"]
    assert [o.name for o in sess.get_outputs()] == ["reconstruction", "score"]
    x = load_dataset(DATA).test_x[:37]
    recon, score = sess.run(None, {"windows": x})
    assert recon.shape == x.shape and score.shape == (37,)
    want = _session(fp32_model).run(["score"], {"windows": x})[0]
    assert np.allclose(score, want, rtol=0.05)


def test_accepted_model_metadata_is_copied_and_marked(
    accepted: QuantReport, fp32_model: Path
) -> None:
    meta32 = dict(_session(fp32_model).get_modelmeta().custom_metadata_map)
    meta8 = dict(_session(Path(str(accepted.out))).get_modelmeta().custom_metadata_map)
    changed = {"ecg.model_version", "ecg.threshold", "ecg.calibration"}
    for key, value in meta32.items():
        if key not in changed:
            assert meta8[key] == value, key
    assert meta8["ecg.model_version"] == meta32["ecg.model_version"] + "+int8"
    assert meta8["ecg.precision"] == "int8-dynamic"
    assert json.loads(meta8["ecg.quantization"])["int8_auc"] == accepted.int8_auc
    assert float(meta8["ecg.threshold"]) == accepted.int8_threshold
    if accepted.threshold_kept:
        assert accepted.int8_threshold == accepted.threshold
        assert meta8["ecg.calibration"] == meta32["ecg.calibration"]
    else:
        assert json.loads(meta8["ecg.calibration"])["recalibrated"] == "int8"


def test_limit_just_below_the_drop_rejects_and_writes_nothing(
    accepted: QuantReport, fp32_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "int8.onnx"
    out.write_bytes(b"previous file")
    limit = accepted.drop - 1e-6
    report = quantize_checked(fp32_model, DATA, out, max_auc_drop=limit, timing_s=0.05)
    assert report.drop == pytest.approx(accepted.drop)  # quantisation is deterministic
    assert not report.accepted and report.out is None
    assert out.read_bytes() == b"previous file"


def test_limit_equal_to_the_drop_accepts(
    accepted: QuantReport, fp32_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "int8.onnx"
    report = quantize_checked(fp32_model, DATA, out, max_auc_drop=accepted.drop, timing_s=0.05)
    assert report.accepted and out.is_file()


def test_missing_corrupt_or_unexported_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no such model file"):
        quantize_checked(tmp_path / "absent.onnx", DATA, tmp_path / "o.onnx")
    bare = tmp_path / "bare.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["windows"], ["score"])],
        "bare",
        [onnx.helper.make_tensor_value_info("windows", onnx.TensorProto.FLOAT, ["b", 140])],
        [onnx.helper.make_tensor_value_info("score", onnx.TensorProto.FLOAT, ["b", 140])],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    proto.ir_version = 9
    onnx.save(proto, bare)
    with pytest.raises(TrainingError, match=r"ecg\.threshold"):
        quantize_checked(bare, DATA, tmp_path / "o.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx file")
    with pytest.raises(TrainingError, match="cannot load model"):
        quantize_checked(corrupt, DATA, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_lstm_int8_uses_the_quantised_lstm_op_and_keeps_outputs(tmp_path: Path) -> None:
    cfg = FitConfig.for_variant("lstm", epochs=1, device="cpu", latent_dim=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = fit(cfg, load_dataset("synthetic:100"), tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    fp32 = export_run(run_dir, tmp_path / "lstm.onnx")
    int8 = tmp_path / "lstm.int8.onnx"
    quantize_int8(fp32, int8)
    assert "DynamicQuantizeLSTM" in {n.op_type for n in onnx.load(str(int8)).graph.node}
    x = load_dataset("synthetic:100").test_x[:9]
    recon, score = _session(int8).run(None, {"windows": x})
    want = _session(fp32).run(["score"], {"windows": x})[0]
    assert recon.shape == x.shape and np.allclose(score, want, rtol=0.05)


def test_module_cli_writes_json_and_reports_bad_input_in_one_line(
    fp32_model: Path, tmp_path: Path
) -> None:
    out, report = tmp_path / "m.int8.onnx", tmp_path / "r.json"
    cmd = [sys.executable, "-m", "training.quantize", str(fp32_model), "--data", DATA]
    run = partial(subprocess.run, cwd=REPO, capture_output=True, text=True, check=False)
    ok = run([*cmd, "--out", str(out), "--json", str(report)])
    assert ok.returncode == 0, ok.stderr
    assert json.loads(report.read_text())["accepted"] == out.is_file()
    bad = run([*cmd[:3], str(tmp_path / "none.onnx"), "--data", DATA, "--out", str(out)])
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no such model file" in bad.stderr


def test_ecg_train_export_int8_reports_the_check_and_writes_only_if_offered(
    fp32_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.onnx"
    assert cli_main(["export", str(fp32_model.parent / "run"), "--out", str(out), "--int8"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "int8: ROC AUC" in printed
    assert out.with_suffix(".int8.onnx").is_file() == ("accepted" in printed)
