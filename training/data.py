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

from monitor.beats import (
    ECG5000_CLASSES,
    NORMAL_CLASS,
    SYNTHETIC_CLASSES,
    UCR_SUFFIXES,
    read_ucr,
    synthetic_beats,
)
from training.errors import DataError

MNIST_CLASSES = {d: f"digit_{d}" for d in range(10)}
PROTOCOLS = ("auto", "seed", "ucr")
# Seed protocol: normal beats split train / validation / test; every anomaly goes to test.
SEED_SPLIT = (0.85, 0.10, 0.05)
# UCR protocol: normal beats of TRAIN split train / validation. The validation part also
# calibrates the threshold, so it is kept large enough for a 1 % quantile to mean something.
UCR_VAL_FRACTION = 0.2
MNIST_SPLIT = (0.8, 0.1, 0.1)
SYNTHETIC_DEFAULT_N = 5000


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
    # Optional group label (e.g. the record id) of each train / val window: cross-conformal
    # calibration then keeps each group in one fold (leave-records-out). None: by window.
    train_groups: np.ndarray | None = None
    val_groups: np.ndarray | None = None

    @property
    def normal_groups(self) -> np.ndarray | None:
        """Group labels of concat(train, val), or None when the data set has none."""
        if self.train_groups is None or self.val_groups is None:
            return None
        return np.concatenate([self.train_groups, self.val_groups])

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
