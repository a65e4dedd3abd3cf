"""Score windows with an exported model file: numpy + onnxruntime only (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from monitor.beats import check_windows, zscore
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

    def score(self, x: np.ndarray, *, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(L1-sum scores float32 [n], reconstructions float32 [n, L]), after the preprocessing
        the model's `ecg.preprocess` asks the caller for (as the daemon applies it)."""
        x = check_windows(x, str(self.path), self.window_length)
        if self.metadata["ecg.preprocess"] == "zscore":
            x = zscore(x)
        scores, recons = [], []
        for i in range(0, x.shape[0], batch):
            recon, score = self.session.run(
                ["reconstruction", "score"], {"windows": np.ascontiguousarray(x[i : i + batch])}
            )
            scores.append(np.asarray(score, dtype=np.float32))
            recons.append(np.asarray(recon, dtype=np.float32))
        return np.concatenate(scores), np.concatenate(recons)
