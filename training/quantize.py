"""Dynamic int8 quantisation of an exported model, offered only if detection quality holds.

ONNX Runtime's `quantize_dynamic` turns MatMul into MatMulInteger and LSTM into the CPU
contrib op DynamicQuantizeLSTM (weights int8, activations quantised per call); the
score (L1 sum) stays float. The int8 file is written only when its ROC AUC on held-out
data is at most `max_auc_drop` below the fp32 model's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from monitor.beats import zscore
from training.calibrate import calibrate
from training.data import Dataset, load_dataset
from training.errors import TrainingError
from training.metrics import roc_auc

MAX_AUC_DROP = 0.002
TIMING_BATCH = 256


@dataclass(frozen=True)
class QuantReport:
    """fp32 vs int8 on the same held-out windows; `accepted` means the int8 file was written."""

    model: str
    out: str | None
    data: str
    n_test: int
    n_val: int
    fp32_auc: float
    int8_auc: float
    drop: float
    max_auc_drop: float
    fp32_windows_s: float
    int8_windows_s: float
    speedup: float
    threshold: float
    int8_threshold: float
    threshold_kept: bool
    fp32_val_far: float
    int8_val_far: float
    accepted: bool

    def summary(self) -> str:
        verdict = "accepted, written to " + str(self.out) if self.accepted else "rejected"
        thr = (
            f"threshold {self.threshold:.4g} kept"
            if self.threshold_kept
            else f"threshold recalibrated {self.threshold:.4g} -> {self.int8_threshold:.4g}"
        )
        return (
            f"int8: ROC AUC {self.fp32_auc:.4f} -> {self.int8_auc:.4f} (drop {self.drop:+.4f}, "
            f"limit {self.max_auc_drop}); {self.fp32_windows_s:,.0f} -> "
            f"{self.int8_windows_s:,.0f} windows/s (x{self.speedup:.2f}); {thr} "
            f"(validation false alarms {self.fp32_val_far:.4f} -> {self.int8_val_far:.4f}); "
            f"{verdict}"
        )


class _Scorer:
    """A CPU ONNX Runtime session returning the model's `score` output."""

    def __init__(self, model: Path | bytes, threads: int = 0) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        src = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.meta: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def scores(self, x: np.ndarray, batch: int = 1024) -> np.ndarray:
        """The model's scores, after the preprocessing its metadata asks the caller for."""
        if self.meta.get("ecg.preprocess", "none") == "zscore":
            x = zscore(x)
        parts = [
            self.session.run(["score"], {self.input: np.ascontiguousarray(x[i : i + batch])})[0]
            for i in range(0, len(x), batch)
        ]
        return np.concatenate(parts).astype(np.float64)

    def windows_per_s(self, x: np.ndarray, min_time_s: float = 1.0) -> float:
        """Median windows/s over repeated full-output runs at one batch (after warm-up)."""
        feed = {self.input: np.ascontiguousarray(x, dtype=np.float32)}
        for _ in range(2):
            self.session.run(None, feed)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < 5 or time.perf_counter() - start < min_time_s:
            t0 = time.perf_counter()
            self.session.run(None, feed)
            times.append(time.perf_counter() - t0)
        return len(x) / statistics.median(times)


def quantize_int8(model: Path, out: Path) -> None:
    """ORT dynamic quantisation (int8 weights, per tensor) of MatMul/Gemm/LSTM nodes."""
    with tempfile.TemporaryDirectory(prefix="ecg-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing only helps; quantise the original if it fails
            pre = model
        quantize_dynamic(
            str(pre),
            str(out),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm", "LSTM"],
        )


def _dataset_for(meta: dict[str, str], data_spec: str) -> Dataset:
    """The data spec split with the seed the model was trained with (as `evaluate` does)."""
    try:
        trained: dict[str, Any] = json.loads(meta.get("ecg.trained_on", "{}"))
    except json.JSONDecodeError:
        trained = {}
    seed = trained.get("seed", 0)
    return load_dataset(data_spec, seed=int(seed) if str(seed).isdigit() else 0)


def _false_alarms(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(scores > threshold)) if scores.size else 0.0


def quantize_checked(
    model: Path,
    data_spec: str,
    out: Path,
    *,
    max_auc_drop: float = MAX_AUC_DROP,
    timing_s: float = 1.0,
) -> QuantReport:
    """Quantise `model` to int8, compare ROC AUC and speed on `data_spec`, write `out` if kept.

    The fp32 threshold is kept unless the int8 scores change the false-alarm count on the
    normal validation windows by more than one window; then the threshold is recalibrated
    on those windows with the model's own method and fpr, and the metadata says so.
    """
    model = Path(model)
    if not model.is_file():
        raise TrainingError(f"{model}: no such model file")
    try:
        fp32 = _Scorer(model)
    except Exception as exc:  # not ONNX, or a graph ORT cannot load: one line, no traceback
        raise TrainingError(f"{model}: cannot load model: {str(exc)[:200]}") from None
    meta = fp32.meta
    if "ecg.threshold" not in meta:
        raise TrainingError(f"{model}: no ecg.threshold in metadata_props (not an exported model)")
    if meta.get("ecg.preprocess", "none") not in ("none", "zscore"):
        raise TrainingError(f"{model}: unknown ecg.preprocess {meta['ecg.preprocess']!r}")
    threshold = float(meta["ecg.threshold"])
    dataset = _dataset_for(meta, data_spec)
    length = int(meta.get("ecg.window_length", dataset.window_length))
    if dataset.window_length != length:
        raise TrainingError(
            f"{data_spec}: windows of {dataset.window_length} samples, model expects {length}"
        )
    labels = dataset.test_is_anomaly

    with tempfile.TemporaryDirectory(prefix="ecg-int8-") as tmp:
        q_path = Path(tmp) / "int8.onnx"
        quantize_int8(model, q_path)
        int8 = _Scorer(q_path)
        fp32_auc = roc_auc(fp32.scores(dataset.test_x), labels)
        int8_auc = roc_auc(int8.scores(dataset.test_x), labels)
        if fp32_auc is None or int8_auc is None:
            raise TrainingError(f"{data_spec}: the test split needs normal and anomalous windows")
        drop = fp32_auc - int8_auc

        val32, val8 = fp32.scores(dataset.val), int8.scores(dataset.val)
        far32, far8 = _false_alarms(val32, threshold), _false_alarms(val8, threshold)
        n_val = len(dataset.val)
        kept = abs(far8 - far32) * n_val <= 1.0 + 1e-9
        new_threshold = threshold
        try:
            calibration: dict[str, Any] = json.loads(meta.get("ecg.calibration", "{}"))
        except json.JSONDecodeError:
            calibration = {}
        if not kept:
            cal = calibrate(val8, float(calibration.get("fpr", 0.01)))
            new_threshold = cal.threshold
            calibration = {**cal.to_json(), "recalibrated": "int8", "fp32_threshold": threshold}

        reps = -(-TIMING_BATCH // len(dataset.test_x))
        timing_x = np.tile(dataset.test_x, (reps, 1))[:TIMING_BATCH]
        fp32_rate = fp32.windows_per_s(timing_x, timing_s)
        int8_rate = int8.windows_per_s(timing_x, timing_s)
        del int8
        accepted = drop <= max_auc_drop
        if accepted:
            proto = onnx.load(str(q_path))
            props = {p.key: p.value for p in proto.metadata_props}
            props = {k: v for k, v in props.items() if not k.startswith("onnx.")}
            props.update(meta)
            props["ecg.threshold"] = repr(float(new_threshold))
            props["ecg.calibration"] = json.dumps(calibration)
            props["ecg.model_version"] = meta.get("ecg.model_version", "") + "+int8"
            props["ecg.precision"] = "int8-dynamic"
            props["ecg.quantization"] = json.dumps(
                {
                    "method": "onnxruntime quantize_dynamic, int8 weights, MatMul/Gemm/LSTM",
                    "data": data_spec,
                    "fp32_auc": fp32_auc,
                    "int8_auc": int8_auc,
                    "max_auc_drop": max_auc_drop,
                }
            )
            del proto.metadata_props[:]
            onnx.helper.set_model_props(proto, props)
            out.parent.mkdir(parents=True, exist_ok=True)
            onnx.save(proto, str(out))

    return QuantReport(
        model=str(model),
        out=str(out) if accepted else None,
        data=data_spec,
        n_test=len(dataset.test_x),
        n_val=n_val,
        fp32_auc=fp32_auc,
        int8_auc=int8_auc,
        drop=drop,
        max_auc_drop=max_auc_drop,
        fp32_windows_s=fp32_rate,
        int8_windows_s=int8_rate,
        speedup=int8_rate / fp32_rate,
        threshold=threshold,
        int8_threshold=new_threshold,
        threshold_kept=kept,
        fp32_val_far=far32,
        int8_val_far=far8,
        accepted=accepted,
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="exported fp32 .onnx")
    parser.add_argument("--data", required=True, help="data spec with held-out test windows")
    parser.add_argument("--out", type=Path, required=True, help="where the int8 .onnx goes")
    parser.add_argument(
        "--max-auc-drop",
        type=float,
        default=MAX_AUC_DROP,
        help="largest held-out ROC AUC loss that still writes the int8 file",
    )
    parser.add_argument("--json", type=Path, help="write the report as JSON")


def main(args: argparse.Namespace) -> int:
    report = quantize_checked(args.model, args.data, args.out, max_auc_drop=args.max_auc_drop)
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__)
    configure(parser)
    try:
        sys.exit(main(parser.parse_args()))
    except TrainingError as exc:
        print(f"quantize: error: {exc}", file=sys.stderr)
        sys.exit(2)
