"""Beat cutting: a window from `pre_s` before to `post_s` after each R peak of the band-passed
signal, resampled to the model's window length and normalised, plus RR-interval context.

`Segmentation` is the model's `ecg.segmentation` metadata (JSON); `cut_beats` (offline) and
`BeatCutter` (streaming, any chunking) give identical beats.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from monitor.errors import DataError
from monitor.frontend.filters import StreamFilter, check_fs

NORMALISATIONS = ("zscore", "none", "median", "median_amp")
# Context features (de Chazal et al. 2004): RR intervals around the beat, in seconds and
# against the local average of the previous `local_rr_beats` RR intervals.
CONTEXT_FEATURES = {
    "pre_rr_s": "RR interval before the beat (s)",
    "post_rr_s": "RR interval after the beat (s); needs the next beat",
    "local_rr_s": "mean of the last local_rr_beats RR intervals up to this beat (s)",
    "pre_rr_ratio": "pre_rr_s / local_rr_s",
    "post_rr_ratio": "post_rr_s / local_rr_s; needs the next beat",
    "amplitude_mv": "peak-to-peak of the filtered window before normalisation (mV)",
    "rr_irregularity": "median of |RR - local_rr_s| / local_rr_s over the last local_rr_beats"
    " RR intervals (high in atrial fibrillation)",
}


@dataclass(frozen=True)
class Segmentation:
    """How a beat is cut from a continuous signal; travels as `ecg.segmentation` JSON."""

    pre_s: float = 0.25
    post_s: float = 0.45
    window_length: int = 140
    normalise: str = "zscore"
    context: tuple[str, ...] = ()
    band_hz: tuple[float, float] = (0.5, 40.0)
    detector: str = "frontend-pt-v1"
    local_rr_beats: int = 10
    version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.pre_s >= 0 and self.post_s > 0 and self.pre_s + self.post_s <= 3.0):
            raise DataError("segmentation", f"bad window {self.pre_s}+{self.post_s} s")
        if self.window_length < 8:
            raise DataError("segmentation", f"window_length {self.window_length} < 8")
        if self.normalise not in NORMALISATIONS:
            raise DataError("segmentation", f"normalise must be one of {NORMALISATIONS}")
        bad = [c for c in self.context if c not in CONTEXT_FEATURES]
        if bad:
            raise DataError("segmentation", f"unknown context features {bad}")
        lo, hi = self.band_hz
        if not 0 < lo < hi:
            raise DataError("segmentation", f"bad band {self.band_hz}")
        if self.local_rr_beats < 1:
            raise DataError("segmentation", "local_rr_beats must be >= 1")

    @property
    def needs_next_beat(self) -> bool:
        return any(c.startswith("post_rr") for c in self.context)

    def to_json(self) -> str:
        d = asdict(self)
        d["context"] = list(self.context)
        d["band_hz"] = list(self.band_hz)
        d["context_descriptions"] = {c: CONTEXT_FEATURES[c] for c in self.context}
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Segmentation:
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise DataError("segmentation", f"not JSON: {exc}") from None
        if not isinstance(d, dict):
            raise DataError("segmentation", "not a JSON object")
        d.pop("context_descriptions", None)
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise DataError("segmentation", f"unknown fields {sorted(unknown)}")
        try:
            d["context"] = tuple(d.get("context", ()))
            d["band_hz"] = tuple(float(v) for v in d.get("band_hz", (0.5, 40.0)))
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise DataError("segmentation", str(exc)) from None


@dataclass(frozen=True)
class BeatSet:
    """Cut beats: R index (absolute sample), window [n, L] f32, context [n, k] f32, pre-RR (s)."""

    r_index: np.ndarray
    windows: np.ndarray
    context: np.ndarray
    rr_s: np.ndarray

    def __len__(self) -> int:
        return int(self.r_index.size)

    @classmethod
    def empty(cls, seg: Segmentation) -> BeatSet:
        return cls(
            np.zeros(0, dtype=np.int64),
            np.zeros((0, seg.window_length), dtype=np.float32),
            np.zeros((0, len(seg.context)), dtype=np.float32),
            np.zeros(0, dtype=np.float64),
        )

    @classmethod
    def concat(cls, parts: list[BeatSet], seg: Segmentation) -> BeatSet:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(seg)
        return cls(
            np.concatenate([p.r_index for p in parts]),
            np.concatenate([p.windows for p in parts]),
            np.concatenate([p.context for p in parts]),
            np.concatenate([p.rr_s for p in parts]),
        )


def normalise(
    w: np.ndarray, how: str, eps: float = 1e-6, scale: np.ndarray | None = None
) -> np.ndarray:
    """Per-beat normalisation of windows [n, L]. `median_amp`: minus the window's median,
    divided by SCALE [n] (the running median peak-to-peak amplitude of the last
    local_rr_beats beats, this one included, that the cutter keeps): amplitude is kept
    relative to the patient's own beats instead of being thrown away per beat."""
    if how == "zscore":
        mu = w.mean(axis=1, keepdims=True)
        sd = w.std(axis=1, keepdims=True)
        out: np.ndarray = (w - mu) / np.maximum(sd, eps)
        return out
    if how in ("median", "median_amp"):
        med: np.ndarray = w - np.median(w, axis=1, keepdims=True)
        if how == "median_amp":
            if scale is None:
                raise ValueError("median_amp needs the running amplitude scale")
            med = med / np.maximum(np.asarray(scale, dtype=np.float64), eps)[:, None]
        return med
    return w


class BeatCutter:
    """Streaming beat cutter: `feed(x_mv, r_peaks)` -> the beats complete so far.

    A beat is emitted once its window (and, if the context needs it, the next R peak) is
    available and it has a previous R peak since the last reset (pre-RR); the band-pass runs
    causally with carried state, so any chunking gives the beats `cut_beats` gives.
    """

    def __init__(
        self, fs: float, seg: Segmentation, start: int = 0, *, lookback_s: float = 3.0
    ) -> None:
        self.fs = check_fs(fs)
        # R peaks arrive up to the detector's latency late: keep that much filtered signal.
        self._lookback = round(lookback_s * self.fs) + 1
        self.seg = seg
        self.filter = StreamFilter(self.fs, *seg.band_hz, delay_at_hz=10.0)
        self._shift = self.filter.delay_samples  # filtered R sits this many samples later
        span = (seg.pre_s + seg.post_s) * self.fs
        self._offsets = -seg.pre_s * self.fs + np.arange(seg.window_length) * (
            span / seg.window_length
        )
        self._pre = int(np.ceil(seg.pre_s * self.fs)) + 1
        self._post = int(np.ceil(seg.post_s * self.fs)) + 1
        self.reset(start)

    def reset(self, start: int = 0) -> None:
        self.filter.reset()
        self._start = int(start)
        self._n = int(start)
        self._buf0 = int(start)
        self._buf = np.zeros(0)
        self._r: list[int] = []  # R peaks not yet emitted, plus the last emitted one
        self._rr_hist: list[int] = []  # RR intervals (samples) up to the last peak
        self._prev: int | None = None  # R before the first of self._r
        self._hist_r: list[int] = []  # recent emitted-or-consumed R peaks (for needed_from)
        self._amp_hist: list[float] = []  # peak-to-peak of the last local_rr_beats windows

    def history_peaks(self, n: int) -> list[int]:
        """The last `n` R peaks this cutter has used or holds (oldest first)."""
        emitted = list(self._hist_r[-n:])
        return (emitted + self._r)[-(n + len(self._r)) :]

    def oldest_needed(self) -> int:
        """Oldest absolute sample index still needed to cut the pending beats."""
        first = min(self._r[0] if self._r else self._n, self._n - self._lookback)
        return max(self._start, first + self._shift - self._pre)

    def feed(self, x_mv: np.ndarray, r_peaks: np.ndarray | list[int]) -> BeatSet:
        x = np.asarray(x_mv, dtype=np.float64).ravel()
        if x.size:
            self._buf = np.concatenate([self._buf, self.filter.feed(x)])
            self._n += x.size
        for r in np.asarray(r_peaks, dtype=np.int64).tolist():
            if self._r and r <= self._r[-1]:
                continue
            self._r.append(int(r))
        out = self._emit()
        cut = max(0, self.oldest_needed() - self._buf0)
        if cut:
            self._buf = self._buf[cut:]
            self._buf0 += cut
        return out

    def _emit(self) -> BeatSet:
        seg = self.seg
        r_out: list[int] = []
        wins: list[np.ndarray] = []
        ctx: list[list[float]] = []
        rrs: list[float] = []
        scales: list[float] = []
        while self._r:
            r = self._r[0]
            nxt = self._r[1] if len(self._r) > 1 else None
            centre = r + self._shift
            if centre + self._post > self._n:
                break  # window not complete yet
            if seg.needs_next_beat and nxt is None:
                break
            self._r.pop(0)
            self._hist_r.append(r)
            del self._hist_r[: -(seg.local_rr_beats + 2)]
            prev, self._prev = self._prev, r
            if prev is None:
                continue  # no pre-RR: the first beat after a reset only anchors the next
            pre_rr = r - prev
            self._rr_hist.append(pre_rr)
            del self._rr_hist[: -seg.local_rr_beats]
            if centre - self._pre < self._start:
                continue
            pos = (centre - self._buf0) + self._offsets
            raw = np.interp(pos, np.arange(self._buf.size), self._buf)
            local = float(np.mean(self._rr_hist)) / self.fs
            amplitude = float(raw.max() - raw.min())
            self._amp_hist.append(amplitude)
            del self._amp_hist[: -seg.local_rr_beats]
            rr_dev = np.abs(np.asarray(self._rr_hist) / self.fs - local) / local
            feats: dict[str, float] = {
                "pre_rr_s": pre_rr / self.fs,
                "local_rr_s": local,
                "pre_rr_ratio": pre_rr / self.fs / local,
                "amplitude_mv": amplitude,
                "rr_irregularity": float(np.median(rr_dev)),
            }
            if nxt is not None:
                feats["post_rr_s"] = (nxt - r) / self.fs
                feats["post_rr_ratio"] = (nxt - r) / self.fs / local
            r_out.append(r)
            wins.append(raw)
            ctx.append([feats[c] for c in seg.context])
            rrs.append(pre_rr / self.fs)
            scales.append(float(np.median(self._amp_hist)))
        if not r_out:
            return BeatSet.empty(seg)
        w = normalise(np.asarray(wins), seg.normalise, scale=np.asarray(scales)).astype(np.float32)
        return BeatSet(
            np.asarray(r_out, dtype=np.int64),
            w,
            np.asarray(ctx, dtype=np.float32).reshape(len(r_out), len(seg.context)),
            np.asarray(rrs, dtype=np.float64),
        )


def cut_beats(signal_mv: np.ndarray, fs: float, r_peaks: np.ndarray, seg: Segmentation) -> BeatSet:
    """Offline beat cutting over a whole record (the same beats as `BeatCutter`)."""
    return BeatCutter(fs, seg).feed(signal_mv, np.sort(np.asarray(r_peaks, dtype=np.int64)))
