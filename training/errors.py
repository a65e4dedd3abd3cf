"""One root exception for the training package; the CLI prints it as one line."""

from __future__ import annotations


class TrainingError(Exception):
    """Anything the user can fix: bad data spec, bad file, bad option."""


class DataError(TrainingError):
    """A data spec or file that cannot be loaded or fails validation."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class ExportError(TrainingError):
    """ONNX export failed or did not match torch within tolerance."""
