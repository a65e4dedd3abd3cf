"""One root exception for the training package; the CLI prints it as one line."""

from __future__ import annotations

from monitor.errors import DataError as SignalDataError


class TrainingError(Exception):
    """Anything the user can fix: bad data spec, bad file, bad option."""


class DataError(TrainingError, SignalDataError):
    """A data spec or file that cannot be loaded or fails validation.

    Also a `monitor.errors.DataError`, the one the shared readers and generators raise, so
    `except DataError` in either package catches both.
    """


class ExportError(TrainingError):
    """ONNX export failed or did not match torch within tolerance."""
