"""One detector contract for every variant (alibi-detect style): score, infer_threshold, predict."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monitor.beats import check_windows
from training.calibrate import Calibration, calibrate
from training.errors import TrainingError
from training.models import Autoencoder, load_state, model_from_spec

CHECKPOINT = "checkpoint.pt"
CALIBRATION = "calibration.json"
SCORE_BATCH = 512


@dataclass(frozen=True)
class Prediction:
    """Per-window scores, the alarm decision and the threshold it was taken at."""

    scores: np.ndarray
    is_anomaly: np.ndarray
    threshold: float


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise TrainingError(f"unknown device {device!r} (expected auto, cpu or cuda)")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda requested but CUDA is not available")
    return torch.device(device)


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise TrainingError(f"{run_dir}: not a run directory (no {CHECKPOINT})")
    try:
        ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: say which, not a traceback
        raise TrainingError(f"{path}: cannot load checkpoint: {exc}") from None
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> Autoencoder:
    model = model_from_spec(ckpt["model"])
    load_state(model, dict(ckpt["state_dict"]))
    model.eval()
    return model


class Detector:
    """A trained autoencoder plus its threshold: higher score = more anomalous."""

    def __init__(
        self,
        model: Autoencoder,
        calibration: Calibration | None = None,
        *,
        device: str = "cpu",
        info: dict[str, Any] | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.calibration = calibration
        self.info = info or {}

    @classmethod
    def load(cls, run_dir: Path, *, device: str = "cpu") -> Detector:
        run_dir = Path(run_dir)
        ckpt = load_checkpoint(run_dir)
        cal_path = run_dir / CALIBRATION
        calibration = None
        if cal_path.is_file():
            calibration = Calibration.from_json(json.loads(cal_path.read_text()))
        elif ckpt.get("calibration"):
            calibration = Calibration.from_json(ckpt["calibration"])
        return cls(model_from_checkpoint(ckpt), calibration, device=device, info=ckpt)

    @property
    def window_length(self) -> int:
        return self.model.input_dim

    @property
    def threshold(self) -> float:
        if self.calibration is None:
            raise TrainingError("detector has no threshold: call infer_threshold first")
        return self.calibration.threshold

    def score_and_reconstruct(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(L1-sum scores float32 [n], reconstructions float32 [n, L]), batched, no grad."""
        x = check_windows(x, "windows", self.window_length)
        scores, recons = [], []
        with torch.no_grad():
            for i in range(0, x.shape[0], SCORE_BATCH):
                xb = torch.from_numpy(x[i : i + SCORE_BATCH]).to(self.device)
                s, r = self.model.score(xb)
                scores.append(s.cpu().numpy())
                recons.append(r.cpu().numpy())
        return (
            np.concatenate(scores).astype(np.float32),
            np.concatenate(recons).astype(np.float32),
        )

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.score_and_reconstruct(x)[0]

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        return self.score_and_reconstruct(x)[1]

    def infer_threshold(
        self, x_normal: np.ndarray, fpr: float = 0.01, *, method: str = "auto"
    ) -> Calibration:
        """Set the threshold from normal windows only and return how it was chosen."""
        self.calibration = calibrate(self.score(x_normal), fpr, method=method)
        return self.calibration

    def predict(self, x: np.ndarray) -> Prediction:
        scores = self.score(x)
        threshold = self.threshold
        return Prediction(scores=scores, is_anomaly=scores > threshold, threshold=threshold)
