"""Causal, stateful filters: the band-passes the front end runs on a stream, chunk by chunk.

The state (`zi`) is plain data carried from one `feed` to the next, so any chunking gives the
same output as one call over the whole record (scipy's `sosfilt(sos, x, zi=zi)` model).
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from monitor.errors import DataError

FS_RANGE = (100.0, 1000.0)


def check_fs(fs: float) -> float:
    """Validate a sampling rate for the front end (Hz)."""
    fs = float(fs)
    if not (np.isfinite(fs) and FS_RANGE[0] <= fs <= FS_RANGE[1]):
        raise DataError(
            "frontend", f"fs must be in [{FS_RANGE[0]:g}, {FS_RANGE[1]:g}] Hz, got {fs}"
        )
    return fs


def design_bandpass(fs: float, low_hz: float, high_hz: float, order: int = 2) -> np.ndarray:
    """Butterworth band-pass as second-order sections (`order` per edge); high edge capped
    below Nyquist so one design works for any fs in FS_RANGE."""
    fs = check_fs(fs)
    high = min(high_hz, 0.45 * fs)
    if not 0.0 < low_hz < high:
        raise DataError("frontend", f"bad band {low_hz}-{high_hz} Hz at fs {fs}")
    sos: np.ndarray = signal.butter(order, [low_hz, high], btype="bandpass", fs=fs, output="sos")
    return sos


def group_delay_s(sos: np.ndarray, fs: float, f_hz: float) -> float:
    """Group delay (s) of a cascade of sections at frequency `f_hz`."""
    b, a = signal.sos2tf(sos)
    _, gd = signal.group_delay((b, a), w=[f_hz], fs=fs)
    return float(gd[0]) / fs


class StreamFilter:
    """Causal Butterworth band-pass fed chunk by chunk.

    `delay_s` is the group delay at `delay_at_hz` (the QRS band for detection, where the
    waveform energy of a beat is): a feature seen at output sample n was at input sample
    n - round(delay_s * fs).
    """

    def __init__(
        self,
        fs: float,
        low_hz: float = 0.5,
        high_hz: float = 40.0,
        *,
        order: int = 2,
        delay_at_hz: float = 10.0,
    ) -> None:
        self.fs = check_fs(fs)
        self.low_hz = float(low_hz)
        self.high_hz = float(high_hz)
        self.sos = design_bandpass(self.fs, self.low_hz, self.high_hz, order)
        self.delay_s = group_delay_s(self.sos, self.fs, delay_at_hz)
        self.zi = np.zeros((self.sos.shape[0], 2))

    @property
    def delay_samples(self) -> int:
        return round(self.delay_s * self.fs)

    def reset(self) -> None:
        """Forget the past (a gap): the next sample starts from rest."""
        self.zi = np.zeros((self.sos.shape[0], 2))

    def feed(self, x: np.ndarray) -> np.ndarray:
        """Filter one chunk (any length, 0 included), carrying the state."""
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            return np.zeros(0)
        y, self.zi = signal.sosfilt(self.sos, x, zi=self.zi)
        out: np.ndarray = y
        return out
