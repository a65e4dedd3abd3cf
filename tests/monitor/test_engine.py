"""ONNX Runtime engine: contract checks, provider choice, and outputs equal to a plain session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from monitor.beats import zscore
from monitor.engine import Model, _ort_reason, _stderr_captured, load_model
from monitor.errors import ModelLoadError
from tests.onnx_models import build_model, windows

ROOT = Path(__file__).resolve().parents[2]


def test_loads_metadata_and_matches_a_plain_onnxruntime_session(tmp_path: Path) -> None:
    path = build_model(tmp_path / "m.onnx", threshold=12.5, name="affine", version="7")
    model = load_model(path, provider="auto")
    info = model.info
    assert (info.name, info.version, info.window_length, info.threshold) == (
        "affine",
        "7",
        140,
        12.5,
    )
    assert info.preprocess == "none"
    assert info.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    x = windows(37, np.arange(37) % 4 == 0)
    out = model.run(x)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    recon, score = plain.run(["reconstruction", "score"], {"windows": x})
    np.testing.assert_allclose(out.score, score, rtol=1e-5)
    np.testing.assert_allclose(out.reconstruction, recon, rtol=1e-5)
    np.testing.assert_array_equal(out.inputs, x)


def test_zscore_named_in_metadata_is_applied_before_the_model(tmp_path: Path) -> None:
    path = build_model(tmp_path / "z.onnx", preprocess="zscore")
    model = load_model(path, provider="cpu")
    x = windows(5) * 3.0 + 1.0
    out = model.run(x)
    np.testing.assert_allclose(out.inputs, zscore(x), rtol=1e-6)
    np.testing.assert_allclose(out.inputs.mean(axis=1), 0.0, atol=1e-5)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (score,) = plain.run(["score"], {"windows": zscore(x)})
    np.testing.assert_allclose(out.score, score, rtol=1e-5)


def test_cpu_provider_is_cpu(tmp_path: Path) -> None:
    model = load_model(build_model(tmp_path / "m.onnx"), provider="cpu")
    assert model.info.provider == "CPUExecutionProvider"


def _cuda_really_runs(path: Path) -> bool:
    try:
        s = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    except Exception:
        return False
    return "CUDAExecutionProvider" in s.get_providers()


def test_cuda_is_used_only_when_it_truly_loads(tmp_path: Path) -> None:
    path = build_model(tmp_path / "m.onnx")
    auto = load_model(path, provider="auto")
    if _cuda_really_runs(path):
        assert auto.info.provider == "CUDAExecutionProvider"
        cuda = load_model(path, provider="cuda")
        x = windows(9)
        np.testing.assert_allclose(
            cuda.run(x).score, load_model(path, provider="cpu").run(x).score, rtol=1e-4
        )
    else:
        assert auto.info.provider == "CPUExecutionProvider"
        with pytest.raises(ModelLoadError, match="cuda"):
            load_model(path, provider="cuda")


def _without_meta(path: Path, key: str) -> Path:
    m = onnx.load(str(path))
    keep = [p for p in m.metadata_props if p.key != key]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.with_name("absent.onnx"), "no such file"),
        (lambda p: (p.write_bytes(b"not a model") and p) or p, "onnxruntime cannot load it"),
        (lambda p: _without_meta(build_model(p), "ecg.threshold"), "no ecg.threshold"),
        (lambda p: _without_meta(build_model(p), "ecg.model_version"), "no ecg.model_version"),
        (lambda p: build_model(p, extra_meta={"ecg.preprocess": "minmax"}), "ecg.preprocess"),
        (lambda p: build_model(p, extra_meta={"ecg.window_length": "141"}), "!= ecg.window_length"),
        (lambda p: build_model(p, extra_meta={"ecg.threshold": "inf"}), "not finite"),
    ],
)
def test_models_breaking_the_contract_are_refused(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match=reason) as err:
        load_model(path, provider="cpu")
    assert err.value.path == str(path)


def test_model_without_the_named_outputs_is_refused(tmp_path: Path) -> None:
    path = build_model(tmp_path / "m.onnx")
    m = onnx.load(str(path))
    m.graph.output[1].name = "scores"
    m.graph.node[-1].output[0] = "scores"
    onnx.save(m, str(path))
    with pytest.raises(ModelLoadError, match="missing output"):
        load_model(path, provider="cpu")


def test_io_binding_path_gives_the_same_outputs(tmp_path: Path) -> None:
    """The CUDA path's IO binding calls, exercised on the CPU provider (no GPU needed)."""
    path = build_model(tmp_path / "m.onnx")
    plain = load_model(path, provider="cpu")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    bound = Model(session, plain.info, io_binding=True)
    for n in (1, 7, 64):
        x = windows(n, np.arange(n) % 3 == 0, seed=n)
        a, b = plain.run(x), bound.run(x)
        np.testing.assert_array_equal(a.score, b.score)
        np.testing.assert_array_equal(a.reconstruction, b.reconstruction)


LOAD_SCRIPT = """
import sys
from monitor.engine import load_model
from monitor.errors import ModelLoadError
from monitor.log import setup_logging
setup_logging("json")
try:
    print(load_model(sys.argv[1], provider=sys.argv[2]).info.provider)
except ModelLoadError as e:
    print("ModelLoadError:", e.reason)
"""


def _load_in_child(path: Path, provider: str) -> tuple[str, list[str]]:
    """load_model in a fresh process: (its stdout, its stderr lines)."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(path), provider],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr.splitlines()


def _events(lines: list[str]) -> dict[str, dict[str, object]]:
    return {e["event"]: e for e in (json.loads(line) for line in lines if line.startswith("{"))}


def test_auto_provider_prints_no_onnxruntime_error_on_a_host_without_a_gpu(
    tmp_path: Path,
) -> None:
    """Whatever the host, stderr holds our JSON events only: no red onnxruntime line."""
    out, err = _load_in_child(build_model(tmp_path / "m.onnx"), "auto")
    assert out in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert [line for line in err if not line.startswith("{")] == [], err
    events = _events(err)
    assert "model_loaded" in events
    if out == "CPUExecutionProvider" and "CUDAExecutionProvider" in ort.get_available_providers():
        # onnxruntime's own complaint became the reason in our event
        reason = str(events["cuda_unavailable"]["reason"])
        assert reason.startswith("CUDA provider did not load"), reason


@pytest.mark.parametrize("provider", ["auto", "cuda"])
def test_a_garbage_file_is_a_model_error_not_a_cuda_failure(tmp_path: Path, provider: str) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(bytes(range(256)) * 8)
    out, err = _load_in_child(path, provider)
    assert out.startswith("ModelLoadError: onnxruntime cannot load it:"), out
    assert "INVALID_PROTOBUF" in out
    assert "cuda" not in " ".join(err).lower(), err  # no CUDA attempt on a file that is not a model


def test_stderr_capture_keeps_everything_that_is_not_onnxruntime(
    capfd: pytest.CaptureFixture[str],
) -> None:
    lines: list[str] = []
    with _stderr_captured(lines):
        os.write(
            2, b"\x1b[1;31m2026-01-01 [E:onnxruntime:Default, x.cc:1 f] boom : 1 : FAIL : gone\n"
        )
        os.write(2, b"\x1b[m\n")
        os.write(2, b"another thread's line\n")
        print("python stderr", file=sys.stderr)
    # nothing else is lost (pytest takes sys.stderr itself, so the order may differ here)
    assert sorted(capfd.readouterr().err.splitlines()) == ["another thread's line", "python stderr"]
    assert lines[0].startswith("2026-01-01 [E:onnxruntime:")
    assert _ort_reason(lines) == "gone"
