"""Data specs to arrays: UCR ECG5000 files, the synthetic ECG generator, MNIST IDX files.

Numpy only (the daemon host imports this module and has no torch).
"""

from __future__ import annotations

import gzip
import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import DataError

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
MNIST_CLASSES = {d: f"digit_{d}" for d in range(10)}
PROTOCOLS = ("auto", "seed", "ucr")
# Seed protocol: normal beats split train / validation / test; every anomaly goes to test.
SEED_SPLIT = (0.85, 0.10, 0.05)
# UCR protocol: normal beats of TRAIN split train / validation. The validation part also
# calibrates the threshold, so it is kept large enough for a 1 % quantile to mean something.
UCR_VAL_FRACTION = 0.2
MNIST_SPLIT = (0.8, 0.1, 0.1)
SYNTHETIC_DEFAULT_N = 5000
UCR_SUFFIXES = (".arff", ".tsv", ".txt")
MIN_WINDOW = 8


@dataclass(frozen=True)
class Dataset:
    """One loaded data spec, already split: train/val hold normal windows only."""

    name: str
    spec: str
    sha256: str
    protocol: str
    seed: int
    train: np.ndarray
    val: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: dict[int, str]
    normal_classes: tuple[int, ...] = (NORMAL_CLASS,)
    preprocess: str = "zscore"

    @property
    def window_length(self) -> int:
        return int(self.train.shape[1])

    @property
    def test_is_anomaly(self) -> np.ndarray:
        return ~np.isin(self.test_y, self.normal_classes)

    def fingerprint(self) -> dict[str, str | int]:
        return {
            "name": self.name,
            "spec": self.spec,
            "sha256": self.sha256,
            "protocol": self.protocol,
            "seed": self.seed,
        }


# ---------------------------------------------------------------- validation helpers


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


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _sha256_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- UCR files


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


def _find_split(folder: Path, split: str) -> Path | None:
    for suffix in UCR_SUFFIXES:
        hits = sorted(p for p in folder.glob(f"*_{split}*") if p.suffix.lower() == suffix)
        if hits:
            return hits[0]
    return None


def _ucr_files(path: Path, spec: str) -> tuple[Path | None, Path | None, list[Path]]:
    """(TRAIN, TEST, all files): a folder gives both if present; a file is one split."""
    if path.is_dir():
        train, test = _find_split(path, "TRAIN"), _find_split(path, "TEST")
        files = [p for p in (train, test) if p is not None]
        if not files:
            raise DataError(spec, f"no *_TRAIN.* or *_TEST.* UCR file in {path}")
        return train, test, files
    if not path.exists():
        raise DataError(spec, "no such file or directory")
    return path, None, [path]


def _split_seed(
    x: np.ndarray, y: np.ndarray, normal: tuple[int, ...], seed: int, fractions: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seed protocol: normals -> train/val/test by fractions; all anomalies -> test."""
    is_normal = np.isin(y, normal)
    idx = np.flatnonzero(is_normal)
    rng = np.random.default_rng(seed)
    idx = idx[rng.permutation(idx.size)]
    n = idx.size
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n))
    n_train = n - n_val - n_test
    train_i, val_i, test_i = idx[:n_train], idx[n_train : n_train + n_val], idx[n_train + n_val :]
    test_all = np.concatenate([test_i, np.flatnonzero(~is_normal)])
    test_all.sort()
    return x[train_i], x[val_i], x[test_all], y[test_all]


def _split_normal_train_val(
    x: np.ndarray, y: np.ndarray, normal: tuple[int, ...], seed: int, val_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    idx = np.flatnonzero(np.isin(y, normal))
    rng = np.random.default_rng(seed)
    idx = idx[rng.permutation(idx.size)]
    n_val = max(1, round(val_fraction * idx.size))
    return x[idx[n_val:]], x[idx[:n_val]]


def _require_normals(y: np.ndarray, normal: tuple[int, ...], source: str, minimum: int) -> None:
    count = int(np.isin(y, normal).sum())
    if count == 0:
        raise DataError(source, f"no windows of the normal class {list(normal)}")
    if count < minimum:
        raise DataError(source, f"only {count} normal windows; need at least {minimum}")


def _load_ucr(spec: str, target: str, protocol: str, seed: int) -> Dataset:
    path = Path(target).expanduser()
    train_file, test_file, files = _ucr_files(path, spec)
    if protocol == "auto":
        protocol = "ucr" if train_file is not None and test_file is not None else "seed"
    normal = (NORMAL_CLASS,)
    parts = [read_ucr(p) for p in files]
    lengths = {x.shape[1] for x, _ in parts}
    if len(lengths) > 1:
        raise DataError(spec, f"TRAIN and TEST have different window lengths {sorted(lengths)}")
    name = re.sub(r"_(TRAIN|TEST)$", "", files[0].stem) or files[0].stem
    sha = _sha256_files(files)
    if protocol == "ucr":
        if train_file is None or test_file is None:
            raise DataError(spec, "the ucr protocol needs a folder with *_TRAIN.* and *_TEST.*")
        (x_tr, y_tr), (x_te, y_te) = parts
        _require_normals(y_tr, normal, str(train_file), 3)
        train, val = _split_normal_train_val(x_tr, y_tr, normal, seed, UCR_VAL_FRACTION)
        test_x, test_y = x_te, y_te
    else:
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        _require_normals(y, normal, str(files[0]) if len(files) == 1 else spec, 3)
        train, val, test_x, test_y = _split_seed(x, y, normal, seed, SEED_SPLIT)
    labels = set(np.unique(test_y).tolist()) | {NORMAL_CLASS}
    class_names = {c: ECG5000_CLASSES.get(c, f"class_{c}") for c in sorted(labels)}
    return Dataset(
        name=name,
        spec=spec,
        sha256=sha,
        protocol=protocol,
        seed=seed,
        train=train,
        val=val,
        test_x=test_x,
        test_y=test_y,
        class_names=class_names,
    )


# ---------------------------------------------------------------- synthetic ECG

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


def _load_synthetic(spec: str, arg: str, protocol: str, seed: int) -> Dataset:
    try:
        n = int(arg) if arg else SYNTHETIC_DEFAULT_N
    except ValueError:
        raise DataError(spec, f"synthetic size {arg!r} is not an integer") from None
    if n < 20:
        raise DataError(spec, f"synthetic size must be >= 20, got {n}")
    if protocol == "ucr":
        raise DataError(spec, "the ucr protocol needs UCR TRAIN/TEST files")
    x, y = synthetic_beats(n, seed=seed)
    train, val, test_x, test_y = _split_seed(x, y, (NORMAL_CLASS,), seed, SEED_SPLIT)
    return Dataset(
        name="synthetic",
        spec=spec,
        sha256=_sha256_arrays(x, y),
        protocol="seed",
        seed=seed,
        train=train,
        val=val,
        test_x=test_x,
        test_y=test_y,
        class_names=dict(SYNTHETIC_CLASSES),
    )


# ---------------------------------------------------------------- MNIST


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(str(path), f"cannot read IDX file: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(str(path), "not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(str(path), "truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(dims))
    if len(data) - header != count:
        raise DataError(str(path), f"IDX payload has {len(data) - header} bytes, expected {count}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        p = directory / name
        if p.is_file():
            return p
    return None


def _mnist_files(directory: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for prefix in ("train", "t10k"):
        images = _idx_file(directory, f"{prefix}-images-idx3-ubyte")
        labels = _idx_file(directory, f"{prefix}-labels-idx1-ubyte")
        if images is not None and labels is not None:
            pairs.append((images, labels))
    return pairs


def load_mnist(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """All MNIST images (uint8 [n, 28, 28]) and labels found in DIR, .gz or raw IDX."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(str(directory), "no such directory")
    pairs = _mnist_files(directory)
    if not pairs:
        raise DataError(str(directory), "no MNIST IDX files (*-images-idx3-ubyte[.gz])")
    images, labels = [], []
    for img_path, lab_path in pairs:
        img, lab = _read_idx(img_path), _read_idx(lab_path)
        if img.ndim != 3 or lab.ndim != 1 or img.shape[0] != lab.shape[0]:
            raise DataError(str(img_path), f"images {img.shape} and labels {lab.shape} disagree")
        images.append(img)
        labels.append(lab.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _load_mnist_spec(spec: str, arg: str, protocol: str, seed: int) -> Dataset:
    target, _, digits = arg.partition("#")
    if not target:
        raise DataError(spec, "mnist needs a directory: mnist:DIR[#DIGITS]")
    directory = Path(target).expanduser()
    images, labels = load_mnist(directory)
    try:
        normal = tuple(sorted({int(d) for d in digits.split(",") if d.strip()})) or tuple(range(10))
    except ValueError:
        raise DataError(
            spec, f"normal digits {digits!r} must be comma-separated integers"
        ) from None
    if protocol == "ucr":
        raise DataError(spec, "the ucr protocol needs UCR TRAIN/TEST files")
    x = (images.reshape(images.shape[0], -1) / 255.0).astype(np.float32)
    _require_normals(labels, normal, spec, 3)
    train, val, test_x, test_y = _split_seed(x, labels, normal, seed, MNIST_SPLIT)
    files = [p for pair in _mnist_files(directory) for p in pair]
    return Dataset(
        name="mnist",
        spec=spec,
        sha256=_sha256_files(files),
        protocol="seed",
        seed=seed,
        train=train,
        val=val,
        test_x=test_x,
        test_y=test_y,
        class_names=dict(MNIST_CLASSES),
        normal_classes=normal,
        preprocess="none",
    )


# ---------------------------------------------------------------- noise models


def gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise: x + sigma * n."""
    return (x + sigma * rng.standard_normal(np.shape(x))).astype(np.float32)


def speckle_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative (speckle) noise: x + x * sigma * n."""
    return (x + x * sigma * rng.standard_normal(np.shape(x))).astype(np.float32)


# ---------------------------------------------------------------- specs

_LOADERS = {"ucr": _load_ucr, "synthetic": _load_synthetic, "mnist": _load_mnist_spec}


def load_dataset(spec: str, *, protocol: str = "auto", seed: int = 0) -> Dataset:
    """Load a data spec (`ucr:PATH`, `synthetic[:N]`, `mnist:DIR[#DIGITS]`) and split it."""
    if protocol not in PROTOCOLS:
        raise DataError(spec, f"unknown protocol {protocol!r} (expected one of {PROTOCOLS})")
    kind, _, arg = spec.partition(":")
    loader = _LOADERS.get(kind)
    if loader is None:
        raise DataError(spec, "unknown data spec (expected ucr:PATH, synthetic[:N] or mnist:DIR)")
    if kind == "ucr" and not arg:
        raise DataError(spec, "ucr needs a path: ucr:PATH")
    return loader(spec, arg, protocol, seed)
