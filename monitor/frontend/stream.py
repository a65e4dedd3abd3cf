"""One device's front end: raw chunks in, cut beats and quality changes out.

filter -> R-peak detector -> beat cutter -> quality monitor, with the stream rules of
DESIGN.md: a chunk that starts later than expected is a gap (everything restarts, quality
`gap`), an earlier one overlaps (already-seen samples are dropped), a new fs restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from monitor.errors import DataError
from monitor.frontend.filters import check_fs
from monitor.frontend.qrs import QrsDetector
from monitor.frontend.quality import QualityChange, QualityMonitor
from monitor.frontend.segment import BeatCutter, BeatSet, Segmentation


@dataclass(frozen=True)
class FrontEndOutput:
    beats: BeatSet
    quality_changes: list[QualityChange] = field(default_factory=list)
    r_peaks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class FrontEnd:
    """The front end of one device's stream; `feed(start, samples)` per chunk."""

    def __init__(self, seg: Segmentation, fs: float) -> None:
        self.seg = seg
        self._build(check_fs(fs), 0)
        self.expected: int | None = None  # index of the next new sample

    def _build(self, fs: float, start: int) -> None:
        self.fs = fs
        self.detector = QrsDetector(fs, start)
        self.cutter = BeatCutter(fs, self.seg, start, lookback_s=self.detector.latency_s)
        self.quality = QualityMonitor(fs, start, peak_latency_s=self.detector.latency_s)
        self._origin = start

    @property
    def latency_s(self) -> float:
        """Upper bound from an R peak's sample to its beat's emission."""
        extra = 60.0 / 40.0 if self.seg.needs_next_beat else 0.0
        return self.detector.latency_s + self.seg.post_s + extra

    def needed_from(self) -> int:
        """Oldest sample a fresh FrontEnd must be fed to reproduce every beat not yet emitted:
        the detector's horizon before the previous beat (the anchor of the first pending one,
        plus the local-RR history), never before this segment's origin."""
        if self.expected is None:
            return 0
        hist = self.cutter.seg.local_rr_beats + 1
        anchors = self.cutter.history_peaks(hist)
        first = anchors[0] if anchors else self.cutter.oldest_needed()
        first = min(first, self.cutter.oldest_needed(), self.expected)
        back = round(self.detector.horizon_s * self.fs)
        return max(self._origin, first - back)

    def feed(self, start: int, samples: np.ndarray, fs: float | None = None) -> FrontEndOutput:
        x = np.asarray(samples, dtype=np.float64).ravel()
        if not np.all(np.isfinite(x)):
            # One NaN would poison every filter state from here on: refuse the chunk.
            raise DataError("frontend", "non-finite samples in a stream chunk")
        changes: list[QualityChange] = []
        if fs is not None and float(fs) != self.fs:
            self._build(check_fs(fs), int(start))
            self.expected = int(start)
            changes.append(QualityChange("gap", int(start), f"sampling rate now {fs:g} Hz"))
        if self.expected is None:
            self._build(self.fs, int(start))
            self.expected = int(start)
        elif start > self.expected:
            gap = start - self.expected
            self._build(self.fs, int(start))
            changes.append(QualityChange("gap", int(start), f"{gap} samples missing"))
            self.expected = int(start)
        elif start < self.expected:
            x = x[self.expected - start :]
        if x.size == 0:
            return FrontEndOutput(BeatSet.empty(self.seg), changes)
        peaks = self.detector.feed(x)
        beats = self.cutter.feed(x, peaks)
        changes.extend(self.quality.feed(x, peaks))
        self.expected += x.size
        return FrontEndOutput(beats, changes, peaks)

    def flush(self) -> FrontEndOutput:
        """End of a record: the detector decides what is left."""
        peaks = self.detector.flush()
        beats = self.cutter.feed(np.zeros(0), peaks)
        return FrontEndOutput(beats, [], peaks)


def process_record(signal_mv: np.ndarray, fs: float, seg: Segmentation) -> BeatSet:
    """A FrontEnd over a whole record (one feed + flush): what training and evaluation use,
    so live and offline beats are the same."""
    fe = FrontEnd(seg, fs)
    a = fe.feed(0, signal_mv)
    b = fe.flush()
    return BeatSet.concat([a.beats, b.beats], seg)
