"""The MNIST case studies run end to end from the CLI and write what they claim."""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from training import cli, mnist
from training.errors import TrainingError


def write_idx(directory: Path, n: int, seed: int = 0) -> Path:
    """Synthetic t10k IDX files: bright bars at a digit-dependent column, gzip-compressed."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, d in enumerate(labels):
        col = 4 + 2 * int(d)
        images[i, 4:24, col : col + 3] = 255
    directory.mkdir(parents=True, exist_ok=True)
    with gzip.open(directory / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x00000803, n, 28, 28) + images.tobytes())
    with gzip.open(directory / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x00000801, n) + labels.tobytes())
    return directory


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """The commands set torch's process-wide thread count; give it back after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


TINY = [
    *("--train-size", "48", "--test-size", "16", "--batch-size", "16"),
    *("--device", "cpu", "--threads", "1"),
]


def test_sweep_writes_figures_and_summary(tmp_path: Path) -> None:
    data = write_idx(tmp_path / "mnist", 80)
    out = tmp_path / "sweep"
    rc = cli.main(
        ["mnist", "sweep", "--data", f"mnist:{data}", "--out", str(out), "--epochs", "2",
         "--latent-dims", "2,8", *TINY]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["latent_dim"] for r in summary["results"]] == [2, 8]
    assert summary["train_images"] == 48 and summary["test_images"] == 16
    for r in summary["results"]:
        assert np.isfinite(r["test_bce_per_image"]) and r["test_mse_per_pixel"] > 0
        assert (out / r["figure"]).stat().st_size > 1000
    assert (out / summary["figure"]).stat().st_size > 1000


def test_denoise_writes_rows_per_noise_model(tmp_path: Path) -> None:
    data = write_idx(tmp_path / "mnist", 80)
    out = tmp_path / "denoise"
    rc = cli.main(
        ["mnist", "denoise", "--data", f"mnist:{data}", "--out", str(out), "--epochs", "1",
         "--noise", "gaussian,speckle", "--sigma", "0.3,0.6", "--latent-dim", "8", *TINY]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    got = {(r["noise"], r["sigma"]) for r in summary["results"]}
    assert got == {("gaussian", 0.3), ("speckle", 0.6)}
    for r in summary["results"]:
        assert r["mse_noisy"] > 0 and np.isfinite(r["psnr_denoised_db"])
        assert (out / r["figure"]).is_file()


def test_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    data = write_idx(tmp_path / "mnist", 50)
    a = mnist.load_split(f"mnist:{data}", train_size=30, test_size=20, seed=3)
    b = mnist.load_split(f"mnist:{data}", train_size=30, test_size=20, seed=3)
    np.testing.assert_array_equal(a.train, b.train)
    assert a.train.shape == (30, 784) and a.test.shape == (20, 784)
    assert a.train.min() >= 0.0 and a.train.max() <= 1.0


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    data = write_idx(tmp_path / "mnist", 64)
    split = mnist.load_split(f"mnist:{data}", train_size=56, test_size=8, seed=0)
    torch.set_num_threads(1)  # small batches: one thread is fastest on a busy machine
    model = mnist.image_model("dense", 4)
    cfg = mnist.LoopConfig(epochs=6, batch_size=8, lr=3e-3, device="cpu", seed=0)
    history = mnist.train_images(model, split.train, cfg)
    assert history[-1] < 0.5 * history[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["--data", "ucr:/nowhere"],
        ["--data", "mnist:/definitely/not/here"],
        ["--data", "mnist:{data}", "--train-size", "70", "--test-size", "20"],
    ],
)
def test_bad_inputs_are_one_line_errors(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_idx(tmp_path / "mnist", 80)
    argv = [a.replace("{data}", str(data)) for a in argv]
    rc = cli.main(["mnist", "sweep", "--out", str(tmp_path / "o"), "--epochs", "1", *argv])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ecg-train: error:") and "Traceback" not in "".join(err)


def test_parse_helpers_reject_bad_lists() -> None:
    with pytest.raises(TrainingError):
        mnist.parse_mnist_spec("mnist:")
    with pytest.raises(SystemExit):
        cli.main(["mnist", "denoise", "--data", "mnist:x", "--out", "o", "--noise", "salt"])


@pytest.mark.data
def test_real_mnist_denoising_beats_the_noise(mnist_dir: Path, tmp_path: Path) -> None:
    """A few epochs on the shared t10k images already remove most Gaussian noise."""
    out = tmp_path / "real"
    rc = cli.main(
        ["mnist", "denoise", "--data", f"mnist:{mnist_dir}", "--out", str(out),
         "--noise", "gaussian", "--sigma", "0.5", "--epochs", "3", "--train-size", "2000",
         "--test-size", "200", "--device", "cpu", "--threads", "1"]
    )  # fmt: skip
    assert rc == 0
    (result,) = json.loads((out / "summary.json").read_text())["results"]
    assert result["mse_denoised"] < 0.5 * result["mse_noisy"]
