"""What both ONNX exporters (window and stream models) share: the opset, the parity
tolerances against torch, and the weights fingerprint in `ecg.model_version`."""

from __future__ import annotations

import hashlib

from torch import nn

OPSET = 17
ATOL = 1e-4  # reconstruction, max abs difference ONNX Runtime vs torch
RTOL_SCORE = 1e-4  # score, relative difference


def weights_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
