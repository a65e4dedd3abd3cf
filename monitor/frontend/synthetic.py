"""Continuous synthetic ECG (the offline default for tests and the demo).

Beats are sums of Gaussian P, Q, R, S, T waves (the shapes of `monitor.beats`), placed on an
RR series with heart-rate variability (respiratory sinus arrhythmia, a 0.1 Hz Mayer wave and
jitter). Labelled anomalous beats: `premature` (early, with a compensatory pause), `wide`
(wide QRS, no P, discordant T: ventricular-like), `st` (ST shift), `inverted_t`. Baseline
wander, measurement noise, motion-artefact bursts and lead-off stretches (flat line) are
added and returned as ground-truth sample ranges. Deterministic by seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitor.errors import DataError
from monitor.frontend.filters import check_fs

KINDS = ("normal", "premature", "wide", "st", "inverted_t")
# Wave: (centre s relative to R, amplitude mV, width s), as in monitor.beats.
WAVES = {
    "P": (-0.17, 0.15, 0.025),
    "Q": (-0.035, -0.12, 0.010),
    "R": (0.0, 1.20, 0.012),
    "S": (0.035, -0.28, 0.012),
    "T": (0.30, 0.32, 0.055),
}


@dataclass(frozen=True)
class SyntheticStream:
    signal_mv: np.ndarray
    fs: float
    r_peaks: np.ndarray  # int64 sample index of every beat's R peak (outside lead-off)
    kinds: np.ndarray  # index into KINDS per beat
    lead_off: np.ndarray  # [m, 2] sample ranges [start, end) of flat line
    artefacts: np.ndarray  # [m, 2] sample ranges of motion-artefact bursts

    def kind_names(self) -> list[str]:
        return [KINDS[k] for k in self.kinds.tolist()]


def synthetic_stream(
    duration_s: float,
    fs: float = 360.0,
    *,
    seed: int = 0,
    hr_bpm: float = 70.0,
    anomaly_rate: float = 0.05,
    noise_mv: float = 0.015,
    wander_mv: float = 0.15,
    artefacts: int = 0,
    lead_off: int = 0,
    amplitude: float = 1.0,
) -> SyntheticStream:
    """`artefacts` motion bursts (1-3 s) and `lead_off` flat stretches (2-6 s) are spread over
    the record, away from its first and last 10 s."""
    fs = check_fs(fs)
    if duration_s <= 0 or not 20.0 <= hr_bpm <= 250.0 or not 0.0 <= anomaly_rate < 1.0:
        raise DataError("synthetic", "bad duration, heart rate or anomaly rate")
    rng = np.random.default_rng(seed)
    n = round(duration_s * fs)
    t = np.arange(n) / fs
    # RR series with HRV.
    rr0 = 60.0 / hr_bpm
    r_times: list[float] = []
    kinds: list[int] = []
    sinus = 0.3 + rng.uniform(0, rr0)  # the sinus node's next beat time
    while sinus < duration_s - 0.5:
        rr_now = rr0 * (
            1.0
            + 0.04 * np.sin(2 * np.pi * 0.25 * sinus)
            + 0.03 * np.sin(2 * np.pi * 0.1 * sinus + 1.0)
            + rng.normal(0, 0.015)
        )
        kind = 0
        if r_times and kinds[-1] == 0 and rng.random() < anomaly_rate:
            kind = int(rng.integers(1, len(KINDS)))
        # A premature beat comes 35-45 % of an RR early; the sinus rhythm goes on (the
        # compensatory pause follows).
        at = sinus - rng.uniform(0.35, 0.45) * rr_now if kind == 1 else sinus
        r_times.append(at)
        kinds.append(kind)
        sinus += rr_now
    r_t = np.asarray(r_times)
    k = np.asarray(kinds, dtype=np.int64)
    x = np.zeros(n)
    half = round(0.6 * fs)
    for rt, kind in zip(r_t.tolist(), k.tolist(), strict=True):
        i0 = max(0, int(rt * fs) - half)
        i1 = min(n, int(rt * fs) + half)
        u = t[i0:i1] - rt
        amp = {w: v[1] * rng.normal(1.0, 0.05) for w, v in WAVES.items()}
        width = {w: v[2] * rng.normal(1.0, 0.04) for w, v in WAVES.items()}
        centre = {w: v[0] for w, v in WAVES.items()}
        if kind == 2:  # wide QRS, ventricular-like
            for w in "QRS":
                width[w] *= 3.5
                centre[w] *= 2.5
            amp["P"] = 0.0
            amp["R"] *= 1.3
            amp["S"] *= 2.0
            amp["T"] = -1.4 * amp["T"]
            width["T"] *= 1.3
        elif kind == 1:
            amp["P"] *= -0.6
        elif kind == 4:
            amp["T"] = -amp["T"]
        for w in WAVES:
            x[i0:i1] += amp[w] * np.exp(-0.5 * ((u - centre[w]) / width[w]) ** 2)
        if kind == 3:  # ST shift: plateau from after S to the T wave
            sgn = 1.0 if rng.random() < 0.5 else -1.0
            rise = 1.0 / (1.0 + np.exp(-(u - 0.06) / 0.008))
            fall = 1.0 / (1.0 + np.exp((u - 0.26) / 0.03))
            x[i0:i1] += sgn * 0.25 * rise * fall
    # R peak sample: the extreme of the rendered beat near its R time.
    r_idx = np.clip(np.round(r_t * fs).astype(np.int64), 0, n - 1)
    x *= amplitude
    x += wander_mv * (
        0.7 * np.sin(2 * np.pi * 0.22 * t + rng.uniform(0, 6.3))
        + 0.3 * np.sin(2 * np.pi * 0.05 * t + rng.uniform(0, 6.3))
    )
    x += rng.normal(0.0, noise_mv, n)
    x += 0.01 * np.sin(2 * np.pi * 50.0 * t)  # mains hum
    spans_a = _spans(rng, artefacts, duration_s, (1.0, 3.0), fs=fs, n=n)
    for a0, a1 in spans_a.tolist():
        m = a1 - a0
        burst = np.cumsum(rng.normal(0, 0.08, m)) + rng.normal(0, 0.25, m)
        burst -= np.linspace(burst[0], burst[-1], m)
        x[a0:a1] += burst * np.hanning(m)
    spans_l = _spans(rng, lead_off, duration_s, (2.0, 6.0), fs=fs, n=n)
    keep = np.ones(r_idx.size, dtype=bool)
    for l0, l1 in spans_l.tolist():
        x[l0:l1] = x[l0]  # electrode off: the amplifier holds one value
        keep &= ~((r_idx >= l0 - round(0.05 * fs)) & (r_idx < l1 + round(0.05 * fs)))
    return SyntheticStream(x, fs, r_idx[keep], k[keep], spans_l, spans_a)


def _spans(
    rng: np.random.Generator,
    count: int,
    duration_s: float,
    dur: tuple[float, float],
    *,
    fs: float,
    n: int,
) -> np.ndarray:
    if count <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    usable = duration_s - 20.0
    if usable <= count * (dur[1] + 5.0):
        raise DataError("synthetic", f"record too short for {count} stretches")
    slot = usable / count
    out = []
    for i in range(count):
        d = rng.uniform(*dur)
        s = 10.0 + i * slot + rng.uniform(0, slot - d - 2.0)
        out.append((round(s * fs), min(n, round((s + d) * fs))))
    return np.asarray(out, dtype=np.int64)
