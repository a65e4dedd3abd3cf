"""Heartbeat windows without torch: z-normalisation, the UCR reader, the synthetic beat generator.

The runtime package owns these because the daemon and the simulator need them; `training`
imports them from here (never the reverse).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from monitor.errors import DataError

NORMAL_CLASS = 1
ECG5000_CLASSES = {1: "normal", 2: "r_on_t_pvc", 3: "pvc", 4: "sp_or_eb", 5: "unclassified"}
SYNTHETIC_CLASSES = {
    1: "normal",
    2: "premature",
    3: "wide_qrs",
    4: "st_shift",
    5: "inverted_t",
    6: "noise_burst",
}
UCR_SUFFIXES = (".arff", ".tsv", ".txt")
MIN_WINDOW = 8


def check_windows(x: np.ndarray, source: str, length: int | None = None) -> np.ndarray:
    """float32 [n, L] with finite values (and the expected length), else DataError."""
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise DataError(source, f"expected windows of shape [n, length], got {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(source, "no windows")
    if length is not None and arr.shape[1] != length:
        raise DataError(source, f"window length {arr.shape[1]} does not match the model's {length}")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.argwhere(bad.any(axis=1))[0, 0])
        raise DataError(source, f"window {row} contains NaN or Inf")
    return arr


def zscore(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-window z-normalisation (population std), as ECG5000 and the exported graph do."""
    x = np.asarray(x, dtype=np.float32)
    mean = x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    out: np.ndarray = ((x - mean) / (std + eps)).astype(np.float32, copy=False)
    return out


def _parse_label(token: str, source: str, line_no: int) -> int:
    token = token.strip().strip("'\"")
    try:
        value = float(token)
    except ValueError:
        raise DataError(source, f"line {line_no}: label {token!r} is not a number") from None
    if not np.isfinite(value) or value != int(value):
        raise DataError(source, f"line {line_no}: label {token!r} is not an integer class")
    return int(value)


def read_ucr(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one UCR split file: .arff (label last), .tsv or .txt (label first)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise DataError(source, "no such file")
    suffix = path.suffix.lower()
    if suffix not in UCR_SUFFIXES:
        raise DataError(source, f"unknown UCR file type {suffix!r} (expected .arff, .tsv or .txt)")
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise DataError(source, "not a text file") from None
    rows: list[list[float]] = []
    labels: list[int] = []
    in_data = suffix != ".arff"
    splitter = re.compile(r"[,\s]+") if suffix == ".txt" else None
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        if not in_data:
            if line.lower().startswith("@data"):
                in_data = True
            continue
        if suffix == ".arff":
            tokens = line.split(",")
            label_token, value_tokens = tokens[-1], tokens[:-1]
        elif suffix == ".tsv":
            tokens = line.split("\t")
            label_token, value_tokens = tokens[0], tokens[1:]
        else:
            assert splitter is not None
            tokens = splitter.split(line)
            label_token, value_tokens = tokens[0], tokens[1:]
        labels.append(_parse_label(label_token, source, line_no))
        try:
            values = [
                float(t) if t.strip() not in ("?", "") else float("nan") for t in value_tokens
            ]
        except ValueError as exc:
            raise DataError(source, f"line {line_no}: {exc}") from None
        if rows and len(values) != len(rows[0]):
            raise DataError(
                source,
                f"ragged windows: line {line_no} has {len(values)} samples, "
                f"the first window has {len(rows[0])}",
            )
        rows.append(values)
    if not rows:
        raise DataError(source, "no data rows")
    if len(rows[0]) < MIN_WINDOW:
        raise DataError(source, f"window length {len(rows[0])} is too short (< {MIN_WINDOW})")
    x = check_windows(np.asarray(rows, dtype=np.float64), source)
    return x, np.asarray(labels, dtype=np.int64)


# Wave: (centre s relative to R, amplitude mV, width s). T's centre scales with sqrt(RR).
_WAVES = {
    "P": (-0.17, 0.15, 0.025),
    "Q": (-0.035, -0.12, 0.010),
    "R": (0.0, 1.20, 0.012),
    "S": (0.035, -0.28, 0.012),
    "T": (0.30, 0.32, 0.055),
}
_WINDOW = (-0.35, 0.65)  # window span in units of the beat's RR interval, R at 35 %


def _gauss(t: np.ndarray, centre: np.ndarray, amp: np.ndarray, width: np.ndarray) -> np.ndarray:
    out: np.ndarray = amp[:, None] * np.exp(-0.5 * ((t - centre[:, None]) / width[:, None]) ** 2)
    return out


def synthetic_beats(
    n: int, *, length: int = 140, anomaly_fraction: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Labelled P-QRS-T beats (sum of Gaussians), one RR interval each, z-normalised.

    Normal beats vary in heart rate, wave amplitudes and widths, baseline wander and noise;
    anomalies (SYNTHETIC_CLASSES 2..6) are spread evenly over the five types.
    """
    if n < 1:
        raise DataError("synthetic", f"number of beats must be >= 1, got {n}")
    if length < MIN_WINDOW:
        raise DataError("synthetic", f"window length {length} is too short (< {MIN_WINDOW})")
    if not 0.0 <= anomaly_fraction < 1.0:
        raise DataError("synthetic", f"anomaly fraction must be in [0, 1), got {anomaly_fraction}")
    rng = np.random.default_rng(seed)
    n_anom = round(n * anomaly_fraction)
    kinds = sorted(SYNTHETIC_CLASSES)[1:]
    labels = np.full(n, NORMAL_CLASS, dtype=np.int64)
    labels[:n_anom] = np.array(kinds)[np.arange(n_anom) % len(kinds)]
    labels = labels[rng.permutation(n)]

    rr = 60.0 / rng.uniform(55.0, 95.0, n)  # seconds
    jitter = rng.normal(0.0, 0.01, n) * rr
    premature = labels == 2
    rr = np.where(premature, rr * rng.uniform(0.55, 0.7, n), rr)
    u = np.linspace(_WINDOW[0], _WINDOW[1], length, endpoint=False)
    t = u[None, :] * rr[:, None] + jitter[:, None]  # seconds relative to R

    def var(scale: float) -> np.ndarray:
        return rng.normal(1.0, scale, n)

    centres = {k: np.full(n, v[0]) * var(0.05) for k, v in _WAVES.items()}
    centres["T"] = _WAVES["T"][0] * np.sqrt(rr / np.where(premature, 0.7, 1.0)) * var(0.04)
    amps = {k: np.full(n, v[1]) * var(0.12) for k, v in _WAVES.items()}
    widths = {k: np.full(n, v[2]) * var(0.08) for k, v in _WAVES.items()}

    # Anomaly morphology.
    pvc = labels == 3
    amps["P"] = np.where(premature, amps["P"] * rng.choice([-0.6, 0.0], n), amps["P"])
    amps["P"] = np.where(pvc, 0.0, amps["P"])
    for k in ("Q", "R", "S"):
        widths[k] = np.where(pvc, widths[k] * rng.uniform(3.0, 4.5, n), widths[k])
    amps["R"] = np.where(pvc, amps["R"] * rng.uniform(1.1, 1.5, n), amps["R"])
    amps["S"] = np.where(pvc, amps["S"] * rng.uniform(1.5, 2.5, n), amps["S"])
    amps["T"] = np.where(pvc, -amps["T"] * rng.uniform(1.2, 1.8, n), amps["T"])
    widths["T"] = np.where(pvc, widths["T"] * 1.3, widths["T"])
    inverted = labels == 5
    amps["T"] = np.where(inverted, -amps["T"] * rng.uniform(0.7, 1.2, n), amps["T"])

    x = np.zeros((n, length))
    for k in _WAVES:
        x += _gauss(t, centres[k], amps[k], widths[k])
    # A premature beat arrives during the previous beat's T wave: its tail opens the window.
    prev_t = _gauss(t, -rr * 0.45, np.where(premature, 0.3, 0.0), np.full(n, 0.06))
    x += prev_t
    # ST shift: a plateau from the end of S to the T wave.
    st = labels == 4
    st_amp = np.where(st, rng.choice([-1.0, 1.0], n) * rng.uniform(0.2, 0.35, n), 0.0)
    st_start = centres["S"] + 0.02
    st_end = centres["T"] - 0.02
    rise = 1.0 / (1.0 + np.exp(-(t - st_start[:, None]) / 0.008))
    fall = 1.0 / (1.0 + np.exp((t - st_end[:, None]) / 0.03))
    x += st_amp[:, None] * rise * fall
    # Baseline wander (slow sine + offset) and measurement noise.
    wander_f = rng.uniform(0.15, 0.5, n)
    wander = rng.uniform(0.0, 0.08, n)[:, None] * np.sin(
        2 * np.pi * wander_f[:, None] * t + rng.uniform(0, 2 * np.pi, n)[:, None]
    )
    x += wander + rng.normal(0.0, 0.05, n)[:, None]
    x += rng.normal(0.0, 1.0, (n, length)) * rng.uniform(0.01, 0.025, n)[:, None]
    # Noise burst: strong broadband noise over 15-35 % of the window.
    burst = labels == 6
    start = rng.uniform(0.0, 0.7, n)
    span = rng.uniform(0.15, 0.35, n)
    pos = np.linspace(0.0, 1.0, length, endpoint=False)[None, :]
    mask = (pos >= start[:, None]) & (pos < (start + span)[:, None]) & burst[:, None]
    x += mask * rng.normal(0.0, 1.0, (n, length)) * rng.uniform(0.2, 0.4, n)[:, None]
    x *= rng.uniform(0.6, 1.5, n)[:, None]  # overall gain (removed by z-normalisation)
    return zscore(x), labels
