"""Score windows with an exported model file: numpy + onnxruntime only (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from monitor.beats import check_windows, zscore
from monitor.frontend.segment import Segmentation
from training.errors import TrainingError

REQUIRED_METADATA = (
    "ecg.window_length",
    "ecg.threshold",
    "ecg.score",
    "ecg.variant",
    "ecg.model_name",
    "ecg.model_version",
    "ecg.preprocess",
    "ecg.calibration",
    "ecg.trained_on",
)


class OnnxModel:
    """An exported ECG model: metadata plus `score(x) -> (scores, reconstruction)`."""

    def __init__(self, path: Path, *, providers: list[str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise TrainingError(f"{self.path}: no such model file")
        try:
            self.session = ort.InferenceSession(
                str(self.path), providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise TrainingError(f"{self.path}: not a loadable ONNX model: {exc}") from None
        meta: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        missing = [k for k in REQUIRED_METADATA if k not in meta]
        if missing:
            raise TrainingError(f"{self.path}: metadata lacks {', '.join(missing)}")
        self.metadata = meta
        self.window_length = int(meta["ecg.window_length"])
        self.threshold = float(meta["ecg.threshold"])
        self.variant = meta["ecg.variant"]
        self.model_name = meta["ecg.model_name"]
        self.model_version = meta["ecg.model_version"]
        self.calibration: dict[str, Any] = json.loads(meta["ecg.calibration"])
        self.trained_on: dict[str, Any] = json.loads(meta["ecg.trained_on"])
        # Stream models: how beats are cut, and an optional second input `context` [n, k].
        self.segmentation: Segmentation | None = (
            Segmentation.from_json(meta["ecg.segmentation"]) if "ecg.segmentation" in meta else None
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.has_context = "context" in self.input_names

    def score(
        self, x: np.ndarray, *, context: np.ndarray | None = None, batch: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [n], reconstructions float32 [n, L]), after the preprocessing
        the model's `ecg.preprocess` asks the caller for (as the daemon applies it); a model
        with a `context` input is fed CONTEXT float32 [n, k] (the front end's features)."""
        x = check_windows(x, str(self.path), self.window_length)
        if self.metadata["ecg.preprocess"] == "zscore":
            x = zscore(x)
        ctx: np.ndarray | None = None
        if self.has_context:
            k = len(self.segmentation.context) if self.segmentation is not None else None
            if context is None:
                raise TrainingError(f"{self.path}: the model needs a context input [n, {k}]")
            ctx = np.asarray(context, dtype=np.float32).reshape(x.shape[0], -1)
            if k is not None and ctx.shape[1] != k:
                raise TrainingError(f"{self.path}: context has {ctx.shape[1]} columns, not {k}")
        scores, recons = [], []
        for i in range(0, x.shape[0], batch):
            feeds = {"windows": np.ascontiguousarray(x[i : i + batch])}
            if ctx is not None:
                feeds["context"] = np.ascontiguousarray(ctx[i : i + batch])
            recon, score = self.session.run(["reconstruction", "score"], feeds)
            scores.append(np.asarray(score, dtype=np.float32))
            recons.append(np.asarray(recon, dtype=np.float32))
        return np.concatenate(scores), np.concatenate(recons)
