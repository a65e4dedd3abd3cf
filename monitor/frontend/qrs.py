"""Streaming R-peak detector (Pan & Tompkins 1985, Hamilton & Tompkins 1986), causal and
chunk-invariant.

Pipeline per chunk, vectorised: band-pass 5-15 Hz -> five-point derivative -> square ->
150 ms moving-window integration (MWI). Candidates are MWI local maxima over +-`refractory_s`
(so two candidates are always more than one refractory period apart), confirmed once the
samples `refractory_s` after them have arrived. Decisions run on candidates only:

* adaptive thresholds from the medians of the last 8 QRS and the last 8 noise peak levels
  (Hamilton-Tompkins): TH1 = noise + 0.10 (qrs - noise), search-back threshold TH2 = TH1 / 2;
* T-wave discrimination: a candidate within 360 ms of the last QRS whose steepest slope is
  under half that QRS's slope is a T wave;
* search-back: when no QRS was found for 1.66 x the mean of the last 8 RR intervals, the
  largest candidate above TH2 since the last QRS is taken (Pan-Tompkins);
* a rejected candidate enters the noise ring clipped at TH2 of a zero noise floor, so missed
  (e.g. ventricular) beats cannot raise the threshold that missed them; noise peaks older
  than 8 s are forgotten (bounded memory);
* the R peak is refined on a wide-band (0.5-40 Hz) copy of the signal: the sample of largest
  |amplitude| from 75 ms before to 40 ms after the expected QRS centre (MWI peak minus the
  band-pass, derivative and half-integration delays), minus that filter's group delay at
  15 Hz (a constant: 1-3 samples).

Every rule reads candidates and sample positions only, never chunk boundaries, so any chunking
gives the same peaks to the sample. State is plain data (filter `zi`, rings, buffers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal
from scipy.ndimage import maximum_filter1d

from monitor.frontend.filters import StreamFilter, check_fs

DETECTOR_NAME = "frontend-pt-v1"


@dataclass
class _Candidate:
    c: int  # MWI peak (absolute sample index)
    level: float  # MWI value
    slope: float  # max |derivative| in the integration window
    r: int  # refined R peak (absolute sample index, input time)


@dataclass
class DetectorState:
    """Decision state: plain data a test can inspect."""

    learning: bool = True
    learn_levels: list[float] = field(default_factory=list)
    qrs_levels: list[float] = field(default_factory=list)  # last 8 QRS MWI peaks
    noise_levels: list[float] = field(default_factory=list)  # last 8 noise MWI peaks
    noise_at: list[int] = field(default_factory=list)  # their MWI indices
    rr: list[int] = field(default_factory=list)  # last 8 RR intervals (samples)
    last_c: int | None = None  # MWI index of the last QRS
    last_r: int | None = None  # R index of the last QRS
    last_slope: float = 0.0
    deadline: int | None = None  # search back when no QRS by this MWI index
    pending: list[_Candidate] = field(default_factory=list)  # since last QRS (search-back)


class QrsDetector:
    """Causal streaming R-peak detector; see the module docstring for the algorithm.

    `feed(x_mv)` returns the absolute sample indices (first sample fed after construction or
    `reset(start)` is `start`) of the R peaks confirmed by this call, in increasing order.
    """

    name = DETECTOR_NAME
    band_hz = (5.0, 15.0)
    refine_band_hz = (0.5, 40.0)
    refine_early_s = 0.065
    refine_late_s = 0.025
    integration_s = 0.150
    refractory_s = 0.200
    t_wave_s = 0.360
    learn_s = 2.0
    searchback_factor = 1.66
    searchback_max_s = 2.0
    searchback_min_s = 0.5
    th_fraction = 0.10
    ring = 8
    noise_memory_s = 8.0

    def __init__(self, fs: float, start: int = 0) -> None:
        self.fs = check_fs(fs)
        fs = self.fs
        self._bp = StreamFilter(fs, *self.band_hz, order=2, delay_at_hz=10.0)
        self._ref = StreamFilter(fs, *self.refine_band_hz, order=2, delay_at_hz=15.0)
        self.n_int = max(2, round(self.integration_s * fs))
        self.w = max(2, round(self.refractory_s * fs))
        self.t_wave = round(self.t_wave_s * fs)
        self._noise_memory = round(self.noise_memory_s * fs)
        self._deriv_b = np.array([2.0, 1.0, 0.0, -1.0, -2.0]) * (fs / 8.0)
        self._mwi_b = np.full(self.n_int, 1.0 / self.n_int)
        # Where the R peak sits relative to the MWI peak c (input time): the MWI peak trails
        # the QRS centre by the band-pass delay + derivative delay (2) + (n_int - 1) / 2.
        lag = self._bp.delay_samples + 2 + (self.n_int - 1) // 2
        early = round(self.refine_early_s * fs)
        late = round(self.refine_late_s * fs)
        self._r_from = lag + early  # search R in [c - r_from, c - r_to]
        self._r_to = max(0, lag - late)
        self._ref_delay = self._ref.delay_samples
        self.keep = 2 * self.w + max(self._r_from, self.n_int) + 8
        self.reset(start)

    # ---- public ---------------------------------------------------------------------
    @property
    def latency_s(self) -> float:
        """Upper bound on the delay between an R peak's sample and the feed that reports it
        (search-back waits at most `searchback_max_s` after the last QRS)."""
        return max(self.searchback_max_s, self.learn_s) + (self.w + self._r_from + 1) / self.fs

    @property
    def horizon_s(self) -> float:
        """Past needed to reproduce decisions: the noise ring forgets after noise_memory_s,
        the QRS and RR rings hold 8 beats (12 s at 40 bpm), learning takes learn_s; measured
        on DS1 (4 records x 13 restarts) a fresh detector agreed within 8 s."""
        return 20.0

    @property
    def delay_s(self) -> float:
        """Constant delay of the refine filter, compensated in the reported indices."""
        return self._ref_delay / self.fs

    def reset(self, start: int = 0) -> None:
        """Start from rest at absolute sample `start` (after a gap or on a new stream)."""
        self._bp.reset()
        self._ref.reset()
        self._deriv_zi = np.zeros(len(self._deriv_b) - 1)
        self._mwi_zi = np.zeros(self.n_int - 1)
        self._start = int(start)
        self._n = int(start)  # absolute index of the next sample
        self._buf0 = int(start)  # absolute index of the buffers' first sample
        self._m = np.zeros(0)
        self._d = np.zeros(0)
        self._y = np.zeros(0)
        self._next_i = self._start + self.w  # next MWI index to test as a candidate
        self.state = DetectorState()

    @property
    def samples_seen(self) -> int:
        return self._n

    def feed(self, x_mv: np.ndarray) -> np.ndarray:
        """Feed one chunk; returns R peaks confirmed by it (absolute indices, int64)."""
        x = np.asarray(x_mv, dtype=np.float64).ravel()
        if x.size:
            self._push(x)
        return self._run(final=False)

    def flush(self) -> np.ndarray:
        """End of record: decide what is left as if the signal stopped here."""
        return self._run(final=True)

    # ---- signal chain ----------------------------------------------------------------
    def _push(self, x: np.ndarray) -> None:
        bp = self._bp.feed(x)
        d, self._deriv_zi = signal.lfilter(self._deriv_b, [1.0], bp, zi=self._deriv_zi)
        m, self._mwi_zi = signal.lfilter(self._mwi_b, [1.0], d * d, zi=self._mwi_zi)
        y = self._ref.feed(x)
        self._m = np.concatenate([self._m, m])
        self._d = np.concatenate([self._d, np.abs(d)])
        self._y = np.concatenate([self._y, y])
        self._n += x.size

    def _trim(self) -> None:
        cut = max(0, (self._n - self.keep) - self._buf0)
        if cut:
            self._m = self._m[cut:]
            self._d = self._d[cut:]
            self._y = self._y[cut:]
            self._buf0 += cut

    def _candidates(self, final: bool) -> list[_Candidate]:
        w = self.w
        last = self._n - 1 if final else self._n - 1 - w  # last testable MWI index
        if last < self._next_i:
            return []
        lo = self._next_i - w - self._buf0
        seg = self._m[lo:]
        if final:
            seg = np.concatenate([seg, np.full(w, -np.inf)])
        mx = maximum_filter1d(seg, 2 * w + 1, mode="nearest")
        k = np.arange(w, w + (last - self._next_i) + 1)
        core = seg[k]
        hit = k[(core == mx[k]) & (core > seg[k - 1]) & (core > 0.0)]
        out: list[_Candidate] = []
        if hit.size:
            b = hit - w + (self._next_i - self._buf0)  # buffer positions of the MWI peaks
            a0 = b - self._r_from + self._ref_delay  # refine windows [a0, a0 + span)
            span = self._r_from - self._r_to + 1
            full = (b >= self.n_int) & (a0 >= 0)
            slope = np.empty(b.size)
            r_pos = np.empty(b.size, dtype=np.int64)
            if full.any():
                bf, af = b[full], a0[full]
                slope[full] = sliding_window_view(self._d, self.n_int + 1)[bf - self.n_int].max(1)
                wins = sliding_window_view(np.abs(self._y), span)[af]
                r_pos[full] = af + wins.argmax(1)
            for i in np.flatnonzero(~full).tolist():  # only right after a (re)start
                bi = int(b[i])
                slope[i] = self._d[max(0, bi - self.n_int) : bi + 1].max()
                lo_i = max(0, int(a0[i]))
                r_pos[i] = lo_i + self._refine(self._y[lo_i : max(lo_i + 1, int(a0[i]) + span)])
            r_abs = np.maximum(self._buf0 + r_pos - self._ref_delay, self._start)
            levels = seg[hit]
            c_abs = self._next_i + (hit - w)
            out = [
                _Candidate(int(c), float(v), float(sl), int(r))
                for c, v, sl, r in zip(
                    c_abs.tolist(), levels.tolist(), slope.tolist(), r_abs.tolist(), strict=True
                )
            ]
        self._next_i = last + 1
        return out

    def _refine(self, win: np.ndarray) -> int:
        """Index of the R peak in `win`: the largest |amplitude| (R, or a QS complex's nadir)."""
        return int(np.argmax(np.abs(win)))

    # ---- decisions -------------------------------------------------------------------
    def _run(self, final: bool) -> np.ndarray:
        peaks: list[int] = []
        for cand in self._candidates(final):
            self._decide(cand, peaks)
        st = self.state
        horizon = self._n - 1 if final else self._next_i - 1  # every candidate <= this is in
        if not st.learning:
            while st.deadline is not None and st.deadline <= horizon:
                self._search_back(peaks)
        elif final and st.learn_levels:
            self._end_learning(peaks)
            while st.deadline is not None and st.deadline <= horizon:
                self._search_back(peaks)
        self._trim()
        return np.asarray(peaks, dtype=np.int64)

    def _thresholds(self, now: int) -> tuple[float, float]:
        st = self.state
        # Noise peaks older than noise_memory_s are forgotten: bounded memory (horizon_s).
        old = 0
        while old < len(st.noise_at) and st.noise_at[old] < now - self._noise_memory:
            old += 1
        if old:
            del st.noise_levels[:old], st.noise_at[:old]
        qrs = median(st.qrs_levels)
        noise = median(st.noise_levels) if st.noise_levels else 0.0
        th1 = noise + self.th_fraction * (qrs - noise)
        return th1, 0.5 * th1

    def _decide(self, cand: _Candidate, peaks: list[int]) -> None:
        st = self.state
        if st.learning:
            if cand.c < self._start + round(self.learn_s * self.fs):
                st.learn_levels.append(cand.level)
                st.pending.append(cand)
                return
            self._end_learning(peaks)
        while st.deadline is not None and st.deadline < cand.c:
            self._search_back(peaks)
        th1, _ = self._thresholds(cand.c)
        if cand.level > th1 and not self._is_t_wave(cand):
            self._accept(cand, peaks)
        else:
            self._noise(cand)
            st.pending.append(cand)

    def _end_learning(self, peaks: list[int]) -> None:
        st = self.state
        st.learning = False
        levels = np.asarray(st.learn_levels)
        st.qrs_levels = [float(levels.max()) * 0.5] if levels.size else [0.0]
        st.noise_levels = [float(np.median(levels)) * 0.5] if levels.size else []
        st.noise_at = [self._start] if levels.size else []
        backlog, st.pending = st.pending, []
        for cand in backlog:
            th1, _ = self._thresholds(cand.c)
            if cand.level > th1 and not self._is_t_wave(cand):
                self._accept(cand, peaks)
            else:
                self._noise(cand)
                st.pending.append(cand)

    def _is_t_wave(self, cand: _Candidate) -> bool:
        st = self.state
        return (
            st.last_c is not None
            and cand.c - st.last_c < self.t_wave
            and cand.slope < 0.5 * st.last_slope
        )

    def _noise(self, cand: _Candidate) -> None:
        st = self.state
        # A rejected candidate may be a missed (e.g. ventricular) beat: count it as noise only
        # up to TH2 of a zero noise floor, so missed beats cannot raise the threshold that
        # missed them. The cap reads the QRS ring only (not the noise ring itself), so the
        # noise ring has no feedback loop and two detectors resynchronise within 8 entries.
        cap = 0.5 * self.th_fraction * median(st.qrs_levels) if st.qrs_levels else np.inf
        st.noise_levels.append(min(cand.level, cap))
        st.noise_at.append(cand.c)
        del st.noise_levels[: -self.ring], st.noise_at[: -self.ring]

    def _accept(self, cand: _Candidate, peaks: list[int]) -> None:
        st = self.state
        if st.last_r is not None and cand.r <= st.last_r:
            return  # refinement collided with the previous beat
        if st.last_c is not None:
            st.rr.append(cand.c - st.last_c)
            del st.rr[: -self.ring]
        st.qrs_levels.append(cand.level)
        del st.qrs_levels[: -self.ring]
        st.last_c, st.last_r, st.last_slope = cand.c, cand.r, cand.slope
        st.pending = []
        st.deadline = cand.c + self._searchback_gap()
        peaks.append(cand.r)

    def _searchback_gap(self) -> int:
        st = self.state
        rr = sum(st.rr) / len(st.rr) if st.rr else 1.0 * self.fs
        gap = min(
            max(self.searchback_factor * rr, self.searchback_min_s * self.fs),
            self.searchback_max_s * self.fs,
        )
        return round(gap)

    def _search_back(self, peaks: list[int]) -> None:
        st = self.state
        assert st.deadline is not None
        _, th2 = self._thresholds(st.deadline)
        pool = [
            c for c in st.pending if c.c <= st.deadline and c.level > th2 and not self._is_t_wave(c)
        ]
        if pool:
            best = max(pool, key=lambda c: c.level)
            rest = [c for c in st.pending if c.c > best.c]
            self._accept(best, peaks)
            st.pending = rest
            return
        # Nothing above TH2: the QRS level estimate is stale (amplitude fell); decay it.
        st.qrs_levels.append(0.5 * median(st.qrs_levels))
        del st.qrs_levels[: -self.ring]
        st.pending = [c for c in st.pending if c.c > st.deadline]
        st.deadline += self._searchback_gap()


def detect_r_peaks(signal_mv: np.ndarray, fs: float) -> np.ndarray:
    """Offline use: one feed of the whole record plus a flush (same peaks as streaming)."""
    det = QrsDetector(fs)
    first = det.feed(signal_mv)
    return np.concatenate([first, det.flush()]).astype(np.int64)
