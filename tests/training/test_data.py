"""Data specs: UCR file forms, protocols, the synthetic generator, MNIST IDX, noise models."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monitor.beats import (
    ECG5000_CLASSES,
    NORMAL_CLASS,
    SYNTHETIC_CLASSES,
    read_ucr,
    synthetic_beats,
    zscore,
)
from monitor.errors import DataError  # what the shared readers raise; training's is one too
from training.data import gaussian_noise, load_dataset, load_mnist, speckle_noise

L = 12


def _rows(n: int, labels: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, L)).round(5), np.array([labels[i % len(labels)] for i in range(n)])


def write_arff(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    head = ["% test file", "@relation t"] + [f"@attribute a{i} numeric" for i in range(x.shape[1])]
    head += ["@attribute target {1,2,3,4,5}", "@data"]
    body = [",".join(f"{v:.5f}" for v in row) + f",{lab}" for row, lab in zip(x, y, strict=True)]
    path.write_text("\n".join(head + body) + "\n")
    return path


def write_tsv(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    lines = [f"{lab}\t" + "\t".join(f"{v:.5f}" for v in row) for row, lab in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_txt(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    lines = [
        f"  {float(lab):.7e}" + "".join(f"  {v:.7e}" for v in row)
        for row, lab in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("writer", [write_arff, write_tsv, write_txt])
def test_read_ucr_forms_put_the_label_where_the_format_has_it(tmp_path: Path, writer) -> None:  # type: ignore[no-untyped-def]
    x, y = _rows(9, [1, 2, 3])
    suffix = {write_arff: ".arff", write_tsv: ".tsv", write_txt: ".txt"}[writer]
    got_x, got_y = read_ucr(writer(tmp_path / f"T_TRAIN{suffix}", x, y))
    assert got_x.dtype == np.float32 and got_y.dtype == np.int64
    np.testing.assert_allclose(got_x, x, atol=1e-5)
    np.testing.assert_array_equal(got_y, y)


def test_seed_protocol_splits_normals_85_10_5_and_puts_every_anomaly_in_test(
    tmp_path: Path,
) -> None:
    x, y = _rows(300, [1, 1, 2])
    path = write_arff(tmp_path / "E_TRAIN.arff", x, y)
    d = load_dataset(f"ucr:{path}", seed=3)
    assert d.protocol == "seed" and d.window_length == L
    assert (len(d.train), len(d.val)) == (170, 20)
    assert (d.test_y == 2).sum() == 100 and (d.test_y == NORMAL_CLASS).sum() == 10
    # normal windows are used once: train, val and test normals are disjoint
    normals = np.concatenate([d.train, d.val, d.test_x[d.test_y == 1]])
    assert len({row.tobytes() for row in normals}) == 200
    assert d.class_names[1] == ECG5000_CLASSES[1]
    again = load_dataset(f"ucr:{path}", seed=3)
    np.testing.assert_array_equal(again.train, d.train)
    other = load_dataset(f"ucr:{path}", seed=4)
    assert not np.array_equal(other.train, d.train)


def test_ucr_protocol_trains_on_normal_train_beats_and_tests_on_test_file(tmp_path: Path) -> None:
    x_tr, y_tr = _rows(50, [1, 2])
    x_te, y_te = _rows(20, [1, 3, 4], seed=1)
    write_tsv(tmp_path / "ECG_TRAIN.tsv", x_tr, y_tr)
    write_tsv(tmp_path / "ECG_TEST.tsv", x_te, y_te)
    d = load_dataset(f"ucr:{tmp_path}")
    assert d.protocol == "ucr" and d.name == "ECG"
    assert len(d.train) + len(d.val) == 25
    np.testing.assert_allclose(d.test_x, x_te, atol=1e-5)
    np.testing.assert_array_equal(d.test_y, y_te)
    merged = load_dataset(f"ucr:{tmp_path}", protocol="seed")
    assert merged.protocol == "seed" and len(merged.test_y) > 0
    assert (merged.test_y != 1).sum() == (y_tr != 1).sum() + (y_te != 1).sum()


def test_ucr_protocol_needs_both_files(tmp_path: Path) -> None:
    x, y = _rows(30, [1, 2])
    path = write_arff(tmp_path / "X_TRAIN.arff", x, y)
    with pytest.raises(DataError, match="TRAIN"):
        load_dataset(f"ucr:{path}", protocol="ucr")


def test_real_ecg5000_train_file(ecg5000_train: Path) -> None:
    x, y = read_ucr(ecg5000_train)
    assert x.shape == (500, 140)
    assert np.bincount(y).tolist() == [0, 292, 177, 10, 19, 2]
    d = load_dataset(f"ucr:{ecg5000_train}")
    assert len(d.train) + len(d.val) + (d.test_y == 1).sum() == 292
    assert len(d.sha256) == 64


@pytest.mark.parametrize(
    ("content", "suffix", "reason"),
    [
        ("1,2,3,4,5,6,7,8,9,1\n1,2,3,1\n", ".arff", "ragged"),
        ("1\t1\t2\t3\t4\t5\t6\t7\tnan\n", ".tsv", "NaN or Inf"),
        ("1\t1\t2\t3\t4\t5\t6\t7\tinf\n", ".tsv", "NaN or Inf"),
        (
            "2\t1\t2\t3\t4\t5\t6\t7\t8\n3\t1\t2\t3\t4\t5\t6\t7\t8\n",
            ".tsv",
            "no windows of the normal",
        ),
        ("1\t1\t2\n", ".tsv", "too short"),
    ],
)
def test_bad_files_raise_one_line_data_errors(
    tmp_path: Path, content: str, suffix: str, reason: str
) -> None:
    path = tmp_path / f"bad{suffix}"
    text = "@data\n" + content if suffix == ".arff" else content
    path.write_text(text)
    with pytest.raises(DataError, match=reason) as info:
        load_dataset(f"ucr:{path}")
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_spec(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"ucr:{tmp_path / 'absent.arff'}")
    with pytest.raises(DataError, match="unknown data spec"):
        load_dataset("kaggle:ecg")
    with pytest.raises(DataError, match="unknown protocol"):
        load_dataset("synthetic:50", protocol="other")


def test_synthetic_beats_are_deterministic_labelled_and_znormalised() -> None:
    x, y = synthetic_beats(600, seed=5)
    x2, y2 = synthetic_beats(600, seed=5)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(synthetic_beats(600, seed=6)[0], x)
    assert x.shape == (600, 140) and x.dtype == np.float32
    counts = np.bincount(y, minlength=7)
    assert counts[1] == 420 and set(counts[2:].tolist()) == {36}
    assert set(np.unique(y).tolist()) == set(SYNTHETIC_CLASSES)
    np.testing.assert_allclose(x.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=1), 1, atol=1e-3)
    # the R peak sits at 35 % of the window in normal beats
    peak = np.argmax(x[y == 1], axis=1)
    assert np.median(peak) == pytest.approx(0.35 * 140, abs=3)


def test_synthetic_anomalies_differ_from_the_mean_normal_beat() -> None:
    """Each anomaly type is further from the normal template than normal beats are."""
    x, y = synthetic_beats(1200, seed=0)
    template = x[y == 1].mean(axis=0)
    dist = np.abs(x - template).sum(axis=1)
    normal_p90 = np.percentile(dist[y == 1], 90)
    for label in range(2, 7):
        assert np.median(dist[y == label]) > normal_p90, SYNTHETIC_CLASSES[label]


def test_synthetic_spec_and_length(tmp_path: Path) -> None:
    d = load_dataset("synthetic:400", seed=1)
    assert d.name == "synthetic" and d.window_length == 140
    assert set(np.unique(d.test_y).tolist()) == set(SYNTHETIC_CLASSES)
    assert synthetic_beats(10, length=64)[0].shape == (10, 64)
    with pytest.raises(DataError):
        load_dataset("synthetic:abc")


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_reads_gz_and_raw_idx(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = np.arange(30) % 10
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images, compress)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, compress)
    got_images, got_labels = load_mnist(tmp_path)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    d = load_dataset(f"mnist:{tmp_path}")
    assert d.window_length == 784 and d.preprocess == "none"
    assert d.train.max() <= 1.0 and d.train.min() >= 0.0
    only_three = load_dataset(f"mnist:{tmp_path}#3")
    assert only_three.normal_classes == (3,)
    assert (only_three.test_y != 3).sum() == 27


def test_load_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no MNIST IDX"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 5)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(DataError, match="IDX"):
        load_mnist(tmp_path)


def test_real_mnist(mnist_dir: Path) -> None:
    images, labels = load_mnist(mnist_dir)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).sum() == 10000 and labels.max() == 9


def test_noise_models() -> None:
    x = np.full((2000, 10), 0.5, dtype=np.float32)
    g = gaussian_noise(x, 0.2, np.random.default_rng(0))
    s = speckle_noise(x, 0.2, np.random.default_rng(0))
    assert g.dtype == np.float32 and s.dtype == np.float32
    assert np.std(g - x) == pytest.approx(0.2, rel=0.05)
    assert np.std(s - x) == pytest.approx(0.1, rel=0.05)  # x * n: scaled by the pixel
    zero = np.zeros((5, 5), dtype=np.float32)
    np.testing.assert_array_equal(speckle_noise(zero, 0.5, np.random.default_rng(1)), zero)


def test_zscore_uses_population_std() -> None:
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(zscore(x), (x - 2.5) / (np.std(x) + 1e-6), rtol=1e-6)


def test_data_module_does_not_import_torch() -> None:
    code = "import training.data, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
