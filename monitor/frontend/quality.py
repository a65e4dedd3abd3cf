"""Signal quality per device: learning | good | noisy | lead_off, with hysteresis.

The signal is judged in consecutive blocks of `block_s` seconds counted from the stream's
start (so chunking does not matter). Per block (Zhao & Zhang 2018, simplified):
* lead-off: flat line (peak-to-peak < `flat_mv`, or `flat_run_s` of one repeated value) or
  saturation (a large share of samples
  sitting at the block's extreme value, the rails of the ADC);
* noise: kurtosis (kSQI) of the band-passed block below `min_kurtosis` (clean ECG is peaky; a
  sine-like signal is not), spectral ratio pSQI = P(5-15 Hz) / P(5-40 Hz) below `min_psqi`
  (broadband noise), or a heart rate from the detector's R peaks outside 25-220 bpm. Measured
  on 1 s blocks of DS1: pSQI's 1st percentile is 0.53-0.70 per record, white noise gives 0.35;
  wide QRS complexes push pSQI up to 0.99, so there is no upper bound; kurtosis of clean 1 s
  blocks goes down to 2.2 (wide complexes), so kSQI only catches sine-like signals.
A new state is entered after `enter_blocks` consecutive blocks say so (lead_off: one); `good` needs
`good_blocks` clean blocks in a row (slower to trust than to distrust).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitor.frontend.filters import StreamFilter, check_fs

STATES = ("learning", "good", "noisy", "lead_off", "gap")


@dataclass(frozen=True)
class QualityChange:
    state: str
    since: int  # absolute sample index where the new state began
    reason: str


class QualityMonitor:
    block_s = 1.0
    learn_blocks = 3
    enter_blocks = 2
    good_blocks = 3
    flat_mv = 0.02
    flat_run_s = 0.3  # this long without any change of value is a flat line too
    saturation_share = 0.25
    min_kurtosis = 2.0  # a sine has 1.5: flutter, mains, oscillation
    min_psqi = 0.45  # broadband (muscle, motion) noise pushes power above 15 Hz
    hr_range_bpm = (25.0, 220.0)

    def __init__(self, fs: float, start: int = 0, *, peak_latency_s: float = 2.5) -> None:
        self.fs = check_fs(fs)
        # R peaks arrive up to this late: the heart-rate rule only looks at peaks older than
        # it, so chunking cannot change which peaks a block sees.
        self.peak_lag = round(peak_latency_s * self.fs) + 1
        self.block = max(1, round(self.block_s * self.fs))
        self.filter = StreamFilter(self.fs, 1.0, 40.0, delay_at_hz=10.0)
        freqs = np.fft.rfftfreq(self.block, 1.0 / self.fs)
        self._qrs_band = (freqs >= 5) & (freqs <= 15)
        self._wide_band = (freqs >= 5) & (freqs <= 40)
        self.reset(start)

    def reset(self, start: int = 0) -> None:
        self.filter.reset()
        self.state = "learning"
        self.since = int(start)
        self._start = int(start)
        self._n = int(start)
        self._raw = np.zeros(0)
        self._flt = np.zeros(0)
        self._blocks_done = 0
        self._run_verdict = ""
        self._run_len = 0
        self._run_since = int(start)
        self._run_reason = ""
        self._peaks: list[int] = []

    def feed(self, x_mv: np.ndarray, r_peaks: np.ndarray | None = None) -> list[QualityChange]:
        """Feed raw samples (and the R peaks the detector found); returns state changes."""
        x = np.asarray(x_mv, dtype=np.float64).ravel()
        if r_peaks is not None:
            self._peaks.extend(int(p) for p in np.asarray(r_peaks).tolist())
        self._raw = np.concatenate([self._raw, x])
        self._flt = np.concatenate([self._flt, self.filter.feed(x)])
        self._n += x.size
        changes: list[QualityChange] = []
        while self._raw.size >= self.block:
            b0 = self._start + self._blocks_done * self.block
            verdict, reason = self._judge(self._raw[: self.block], self._flt[: self.block], b0)
            self._raw = self._raw[self.block :]
            self._flt = self._flt[self.block :]
            self._blocks_done += 1
            change = self._step(verdict, reason, b0)
            if change is not None:
                changes.append(change)
        return changes

    def _judge(self, raw: np.ndarray, flt: np.ndarray, b0: int) -> tuple[str, str]:
        ptp = float(raw.max() - raw.min())
        if ptp < self.flat_mv:
            return "lead_off", f"flat line (peak-to-peak {ptp:.3f} mV)"
        run = _longest_constant_run(raw)
        if run >= self.flat_run_s * self.fs:
            return "lead_off", f"flat line for {run / self.fs:.2f} s"
        at_rail = max(np.mean(raw == raw.max()), np.mean(raw == raw.min()))
        if at_rail > self.saturation_share:
            return "lead_off", f"saturation ({100 * at_rail:.0f} % of samples at the rail)"
        sd = float(flt.std())
        if sd > 0:
            kurt = float(np.mean(((flt - flt.mean()) / sd) ** 4))
            if kurt < self.min_kurtosis:
                return "noisy", f"low kurtosis {kurt:.1f}"
        spec = np.abs(np.fft.rfft(raw - raw.mean())) ** 2
        wide = float(spec[self._wide_band].sum())
        if wide > 0:
            psqi = float(spec[self._qrs_band].sum()) / wide
            if psqi < self.min_psqi:
                return "noisy", f"spectral ratio pSQI {psqi:.2f}"
        # Heart rate over 8 s of R peaks ending peak_lag before the block's end.
        end = b0 + self.block - self.peak_lag
        self._peaks = [p for p in self._peaks if p >= end - 16 * self.block]
        recent = [p for p in self._peaks if end - 8 * self.block <= p < end]
        if end - 8 * self.block >= self._start:
            hr = len(recent) * 60.0 / (8 * self.block_s)
            if not self.hr_range_bpm[0] <= hr <= self.hr_range_bpm[1]:
                return "noisy", f"implausible heart rate {hr:.0f} bpm"
        return "good", "clean"

    def _step(self, verdict: str, reason: str, b0: int) -> QualityChange | None:
        if verdict == self._run_verdict:
            self._run_len += 1
        else:
            self._run_verdict, self._run_len, self._run_since = verdict, 1, b0
            self._run_reason = reason
        if self._blocks_done < self.learn_blocks:
            return None
        # A flat or saturated block is unambiguous: lead_off needs one block.
        need = {"good": self.good_blocks, "lead_off": 1}.get(verdict, self.enter_blocks)
        if self.state != verdict and self._run_len >= need:
            self.state, self.since = verdict, self._run_since
            return QualityChange(verdict, self._run_since, self._run_reason)
        return None


def _longest_constant_run(x: np.ndarray) -> int:
    """Length (samples) of the longest stretch of one repeated value."""
    if x.size < 2:
        return int(x.size)
    same = np.concatenate([[False], x[1:] == x[:-1], [False]])
    edges = np.flatnonzero(same[1:] != same[:-1])
    if edges.size == 0:
        return 1
    return int((edges[1::2] - edges[0::2]).max()) + 1
