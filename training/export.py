"""Export a run to the ONNX model contract of DESIGN.md and verify it against torch.

The graph takes raw windows [batch, L], z-normalises each one (baked in, so devices may
send raw amplitudes), and returns `reconstruction` [batch, L] and `score` [batch] = the
L1 sum of |normalised window − reconstruction|. Threshold and provenance go in
metadata_props.
"""

from __future__ import annotations

import argparse
import io
import json
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from monitor.beats import synthetic_beats
from training.detector import CALIBRATION, load_checkpoint, model_from_checkpoint
from training.errors import ExportError
from training.models import Autoencoder, Ensemble
from training.onnx_common import ATOL, OPSET, RTOL_SCORE, weights_sha256
from training.quantize import quantize_checked

PARITY_BATCHES = (1, 7, 64)


def score_name(model: Autoencoder) -> str:
    """`ecg.score`: l1_sum, std_l1_sum, and `_plus_latent_distance` with the latent term;
    `mean_of_K(...)` for an ensemble of K models."""
    name = "std_l1_sum" if model.standardised else "l1_sum"
    name = name + "_plus_latent_distance" if model.latent_scored else name
    if isinstance(model, Ensemble):
        return f"mean_of_{len(model.members)}({name})"
    return name


class ScoringGraph(nn.Module):
    """windows -> (reconstruction, score): the exported computation."""

    def __init__(self, model: Autoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        score, recon = self.model.score(windows)
        return recon, score


def _metadata(ckpt: dict[str, Any], run_dir: Path, model: Autoencoder) -> dict[str, str]:
    cal_path = run_dir / CALIBRATION
    calibration = json.loads(cal_path.read_text()) if cal_path.is_file() else ckpt["calibration"]
    data = ckpt["data"]
    created = str(ckpt.get("created", "19700101T000000Z"))
    version = f"{created[:13]}Z-{weights_sha256(model)[:8]}"
    return {
        "ecg.window_length": str(model.input_dim),
        "ecg.threshold": repr(float(calibration["threshold"])),
        # std_l1_sum: Σ w_j |x_j − r_j| with per-sample weights baked into the graph
        "ecg.score": score_name(model),
        "ecg.variant": model.architecture,
        "ecg.ensemble": str(len(model.members)) if isinstance(model, Ensemble) else "1",
        "ecg.model_name": f"{str(data['name']).lower()}-{model.architecture}",
        "ecg.model_version": version,
        "ecg.preprocess": "none",
        "ecg.graph_preprocess": "zscore" if model.zscore else "none",
        "ecg.calibration": json.dumps(calibration, sort_keys=True),
        "ecg.trained_on": json.dumps(
            {k: data[k] for k in ("name", "spec", "sha256", "protocol", "seed") if k in data},
            sort_keys=True,
        ),
    }


def _torch_export(graph: ScoringGraph, length: int, path: Path) -> None:
    example = torch.zeros(2, length)
    sink = io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=["windows"],
            output_names=["reconstruction", "score"],
            dynamic_axes={
                "windows": {0: "batch"},
                "reconstruction": {0: "batch"},
                "score": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )


def verify(graph: ScoringGraph, path: Path) -> dict[str, float]:
    """ONNX Runtime vs torch on realistic and raw-amplitude windows at several batch sizes."""
    length = graph.model.input_dim
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    beats, _ = synthetic_beats(max(PARITY_BATCHES), length=length, seed=1)
    worst = {"reconstruction_abs": 0.0, "score_rel": 0.0}
    for batch in PARITY_BATCHES:
        # raw amplitudes: offset and gain, so the baked-in z-score is exercised
        x = beats[:batch] * rng.uniform(0.5, 3.0, (batch, 1)) + rng.normal(0, 2, (batch, 1))
        x = x.astype(np.float32)
        with torch.no_grad():
            want_recon, want_score = (t.numpy() for t in graph(torch.from_numpy(x)))
        got_recon, got_score = session.run(["reconstruction", "score"], {"windows": x})
        if got_recon.shape != (batch, length) or got_score.shape != (batch,):
            raise ExportError(
                f"{path}: ONNX output shapes {got_recon.shape}, {got_score.shape} at batch {batch}"
            )
        diff = float(np.abs(got_recon - want_recon).max())
        rel = float((np.abs(got_score - want_score) / np.maximum(1.0, np.abs(want_score))).max())
        worst["reconstruction_abs"] = max(worst["reconstruction_abs"], diff)
        worst["score_rel"] = max(worst["score_rel"], rel)
        if not diff <= ATOL or not rel <= RTOL_SCORE:
            raise ExportError(
                f"{path}: ONNX Runtime differs from torch at batch {batch}: "
                f"reconstruction max abs {diff:.3g} (limit {ATOL}), score rel {rel:.3g}"
            )
    return worst


def export_run(run_dir: Path, out: Path) -> Path:
    """Write RUN_DIR's model as ONNX to OUT with its metadata; fail unless it matches torch."""
    run_dir, out = Path(run_dir), Path(out)
    ckpt = load_checkpoint(run_dir)
    if "stream" in ckpt:  # trained on continuous records: windows + context inputs
        from training.stream_export import export_stream_run  # noqa: PLC0415

        return export_stream_run(ckpt, run_dir, out)
    model = model_from_checkpoint(ckpt)
    graph = ScoringGraph(model).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        _torch_export(graph, model.input_dim, tmp)
        proto = onnx.load(str(tmp))
        for key, value in _metadata(ckpt, run_dir, model).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "ecg-train"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        verify(graph, tmp)
    except ExportError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:  # exporter internals: report as one line
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{run_dir}: ONNX export failed: {type(exc).__name__}: {exc}") from None
    tmp.replace(out)
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="run directory written by `ecg-train fit`")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write OUT.int8.onnx if int8 keeps held-out ROC AUC within 0.002",
    )
    parser.add_argument("--int8-data", help="data spec for that check (default: the run's)")


def main(args: argparse.Namespace) -> int:
    path = export_run(args.run_dir, args.out)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    print(
        f"{path}: {meta['ecg.model_name']} {meta['ecg.model_version']} "
        f"threshold={float(meta['ecg.threshold']):.3f}"
    )
    if args.int8:
        spec = args.int8_data or load_checkpoint(args.run_dir)["data"]["spec"]
        print(quantize_checked(path, spec, path.with_suffix(".int8.onnx")).summary())
    return 0
