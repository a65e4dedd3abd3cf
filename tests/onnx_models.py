"""Small real ONNX models that satisfy the model contract, built with onnx.helper.

reconstruction = template + alpha * (windows - template)  (a fixed affine map)
score          = ReduceSum(Abs(windows - reconstruction), axis 1)
so score = (1 - alpha) * sum |windows - template|: windows near the template score low.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LENGTH = 140


def template(length: int = LENGTH) -> np.ndarray:
    """A fixed heartbeat-like shape the test models reconstruct towards."""
    t = np.linspace(0.0, 1.0, length, dtype=np.float32)
    beat = np.exp(-(((t - 0.3) / 0.03) ** 2)) * 3.0 - np.exp(-(((t - 0.6) / 0.1) ** 2))
    return beat.astype(np.float32)


def build_model(
    path: Path,
    *,
    length: int = LENGTH,
    threshold: float = 20.0,
    alpha: float = 0.5,
    name: str = "test-affine",
    version: str = "v1",
    preprocess: str = "none",
    extra_meta: dict[str, str] | None = None,
    slow: int = 0,
) -> Path:
    """Write an ONNX model of the contract to `path` and return it. `slow` > 0 routes the
    windows through that many identity MatMuls first (same outputs, more time per batch)."""
    tmpl = numpy_helper.from_array(template(length)[None, :], "template")
    alpha_t = numpy_helper.from_array(np.array(alpha, dtype=np.float32), "alpha")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    eye = numpy_helper.from_array(np.eye(length, dtype=np.float32), "eye")
    nodes = []
    src = "windows"
    for i in range(slow):
        nodes.append(helper.make_node("MatMul", [src, "eye"], [f"slow{i}"]))
        src = f"slow{i}"
    nodes += [
        helper.make_node("Sub", [src, "template"], ["centered"]),
        helper.make_node("Mul", ["centered", "alpha"], ["scaled"]),
        helper.make_node("Add", ["scaled", "template"], ["reconstruction"]),
        helper.make_node("Sub", ["windows", "reconstruction"], ["err"]),
        helper.make_node("Abs", ["err"], ["abs_err"]),
        helper.make_node("ReduceSum", ["abs_err", "axes"], ["score"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["batch", length])],
        [
            helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, ["batch", length]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
        ],
        initializer=[tmpl, alpha_t, axes, eye],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {
        "ecg.window_length": str(length),
        "ecg.threshold": repr(float(threshold)),
        "ecg.score": "l1_sum",
        "ecg.variant": "affine",
        "ecg.model_name": name,
        "ecg.model_version": version,
        "ecg.preprocess": preprocess,
        "ecg.calibration": '{"method": "fixed"}',
        "ecg.trained_on": '{"name": "none", "sha256": ""}',
    }
    meta.update(extra_meta or {})
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def windows(n: int, anomalous: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """n windows near the template (score ~ a few units); rows in `anomalous` get a big bump."""
    rng = np.random.default_rng(seed)
    x = template()[None, :] + rng.normal(0.0, 0.05, size=(n, LENGTH)).astype(np.float32)
    if anomalous is not None:
        idx = np.flatnonzero(anomalous)
        pos = rng.integers(10, LENGTH - 10, size=idx.size)
        for row, p in zip(idx, pos, strict=True):
            x[row, p - 5 : p + 5] += 8.0
    return x.astype(np.float32)


def build_stream_model(
    path: Path,
    seg_json: str,
    *,
    length: int = LENGTH,
    threshold: float = 20.0,
    context: int = 0,
    context_weight: float = 1.0,
    name: str = "test-stream",
    version: str = "v1",
    calibration_scores: list[float] | None = None,
) -> Path:
    """A stream model: the affine model of `build_model` plus `ecg.segmentation`; with
    `context` = k > 0 a second input `context` [batch, k] whose weighted sum is added to the
    score (so a test can tell the daemon fed it exactly)."""
    tmpl = numpy_helper.from_array(template(length)[None, :], "template")
    alpha_t = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "alpha")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("Sub", ["windows", "template"], ["centered"]),
        helper.make_node("Mul", ["centered", "alpha"], ["scaled"]),
        helper.make_node("Add", ["scaled", "template"], ["reconstruction"]),
        helper.make_node("Sub", ["windows", "reconstruction"], ["err"]),
        helper.make_node("Abs", ["err"], ["abs_err"]),
    ]
    inits = [tmpl, alpha_t, axes]
    inputs = [helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["batch", length])]
    if context:
        w = numpy_helper.from_array(np.full((context,), context_weight, np.float32), "cw")
        inits.append(w)
        inputs.append(
            helper.make_tensor_value_info("context", TensorProto.FLOAT, ["batch", context])
        )
        nodes += [
            helper.make_node("ReduceSum", ["abs_err", "axes"], ["l1"], keepdims=0),
            helper.make_node("Mul", ["context", "cw"], ["cwx"]),
            helper.make_node("ReduceSum", ["cwx", "axes"], ["csum"], keepdims=0),
            helper.make_node("Add", ["l1", "csum"], ["score"]),
        ]
    else:
        nodes.append(helper.make_node("ReduceSum", ["abs_err", "axes"], ["score"], keepdims=0))
    graph = helper.make_graph(
        nodes,
        name,
        inputs,
        [
            helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, ["batch", length]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    cal: dict[str, object] = {"method": "fixed"}
    if calibration_scores is not None:
        cal = {
            "method": "quantile",
            "n": len(calibration_scores),
            "scores": sorted(calibration_scores),
        }
    helper.set_model_props(
        model,
        {
            "ecg.window_length": str(length),
            "ecg.threshold": repr(float(threshold)),
            "ecg.score": "l1_sum",
            "ecg.variant": "affine",
            "ecg.model_name": name,
            "ecg.model_version": version,
            "ecg.preprocess": "none",
            "ecg.calibration": json.dumps(cal),
            "ecg.trained_on": '{"name": "none", "sha256": ""}',
            "ecg.segmentation": seg_json,
        },
    )
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
