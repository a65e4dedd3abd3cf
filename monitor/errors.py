"""One root exception for the daemon, with subclasses that carry structured fields."""

from __future__ import annotations

from typing import Literal

RejectCode = Literal[
    "bad_json",
    "bad_frame",
    "bad_length",
    "non_finite",
    "bad_field",
    "too_large",
    "bad_device_id",
    "bad_stream",
    "out_of_range",
    "internal_error",
]


class MonitorError(Exception):
    """Root of every error the monitor raises on purpose."""


class PayloadError(MonitorError):
    """An incoming message that cannot become windows; `code` is the reject code."""

    def __init__(self, code: RejectCode, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code: RejectCode = code
        self.reason = reason


class ConfigError(MonitorError):
    """The configuration file or an option is invalid."""


class ModelLoadError(MonitorError):
    """An ONNX model file that cannot be loaded or breaks the model contract."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DataError(MonitorError):
    """A data file or generator request that cannot be loaded or fails validation."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
