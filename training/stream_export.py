"""Export a stream run (`ecg-train fit --data mitdb:… | stream-synthetic…`) to ONNX.

Inputs `windows` f32 [batch, L] (the front end's normalised beats, no preprocessing left to
the caller: `ecg.preprocess` = none) and, when the segmentation has context features,
`context` f32 [batch, k] in the order `ecg.segmentation` names them. Outputs
`reconstruction` [batch, L] and `score` [batch] (see training.stream_model for the formula;
`ecg.score_definition` carries it with its constants). Verified against torch on real beats.
"""

from __future__ import annotations

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

from monitor.frontend.segment import Segmentation
from monitor.frontend.stream import process_record
from monitor.frontend.synthetic import synthetic_stream
from training.errors import ExportError
from training.onnx_common import ATOL, OPSET, RTOL_SCORE, weights_sha256
from training.stream_model import StreamScorer, score_definition, scorer_from_checkpoint


class _WithContext(nn.Module):
    def __init__(self, scorer: StreamScorer) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(self, windows: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        recon, score = self.scorer(windows, context)
        return recon, score


class _WindowsOnly(nn.Module):
    def __init__(self, scorer: StreamScorer) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        recon, score = self.scorer(windows, None)
        return recon, score


def stream_metadata(ckpt: dict[str, Any], scorer: StreamScorer) -> dict[str, str]:
    stream = ckpt["stream"]
    data = ckpt["data"]
    seg = Segmentation.from_json(stream["segmentation"])
    created = str(ckpt.get("created", "19700101T000000Z"))
    definition = score_definition(scorer)
    return {
        "ecg.window_length": str(seg.window_length),
        "ecg.threshold": repr(float(ckpt["calibration"]["threshold"])),
        "ecg.score": str(definition["score"]),
        "ecg.score_definition": json.dumps(definition, sort_keys=True),
        "ecg.variant": str(ckpt["model"]["variant"]),
        "ecg.model_name": str(stream["model_name"]),
        "ecg.model_version": f"{created[:13]}Z-{weights_sha256(scorer)[:8]}",
        "ecg.preprocess": "none",
        "ecg.graph_preprocess": "none",
        "ecg.segmentation": seg.to_json(),
        "ecg.calibration": json.dumps(ckpt["calibration"], sort_keys=True),
        "ecg.trained_on": json.dumps(data, sort_keys=True),
        "ecg.cross_validation": json.dumps(stream.get("cv_summary", {}), sort_keys=True),
    }


def _export(scorer: StreamScorer, seg: Segmentation, path: Path) -> None:
    k = len(seg.context)
    windows = torch.zeros(2, seg.window_length)
    sink = io.StringIO()
    axes = {"windows": {0: "batch"}, "reconstruction": {0: "batch"}, "score": {0: "batch"}}
    with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
        warnings.simplefilter("ignore")
        if k:
            torch.onnx.export(
                _WithContext(scorer).eval(),
                (windows, torch.ones(2, k)),
                str(path),
                input_names=["windows", "context"],
                output_names=["reconstruction", "score"],
                dynamic_axes={**axes, "context": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        else:
            torch.onnx.export(
                _WindowsOnly(scorer).eval(),
                (windows,),
                str(path),
                input_names=["windows"],
                output_names=["reconstruction", "score"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )


def verify_stream(scorer: StreamScorer, seg: Segmentation, path: Path) -> dict[str, float]:
    """ONNX Runtime against torch on front-end beats of a synthetic stream, batch 1/7/all."""
    stream = synthetic_stream(60.0, 360.0, seed=7, anomaly_rate=0.2)
    beats = process_record(stream.signal_mv, stream.fs, seg)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = {"reconstruction_abs": 0.0, "score_rel": 0.0}
    for batch in (1, 7, len(beats)):
        w, c = beats.windows[:batch], beats.context[:batch]
        want_s, want_r = scorer.score_numpy(w, c)
        feeds = {"windows": w, **({"context": c} if seg.context else {})}
        got_r, got_s = session.run(["reconstruction", "score"], feeds)
        diff = float(np.abs(got_r - want_r).max())
        rel = float((np.abs(got_s - want_s) / np.maximum(1.0, np.abs(want_s))).max())
        worst["reconstruction_abs"] = max(worst["reconstruction_abs"], diff)
        worst["score_rel"] = max(worst["score_rel"], rel)
        if not diff <= ATOL or not rel <= RTOL_SCORE:
            raise ExportError(
                f"{path}: ONNX Runtime differs from torch at batch {batch}: "
                f"reconstruction {diff:.3g}, score rel {rel:.3g}"
            )
    return worst


def export_stream_run(ckpt: dict[str, Any], run_dir: Path, out: Path) -> Path:
    scorer = scorer_from_checkpoint(ckpt)
    seg = Segmentation.from_json(ckpt["stream"]["segmentation"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        _export(scorer, seg, tmp)
        proto = onnx.load(str(tmp))
        for key, value in stream_metadata(ckpt, scorer).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "ecg-train"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        verify_stream(scorer, seg, tmp)
    except ExportError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:  # exporter internals: one line
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{run_dir}: ONNX export failed: {type(exc).__name__}: {exc}") from None
    tmp.replace(out)
    return out
