"""The seed's MNIST case studies: a latent-size sweep of the vanilla autoencoder, and denoising.

The shared MNIST holds the 10,000-image test set only, so it is split (seeded) into a
training and a held-out part; pixels are scaled to [0, 1] and flattened to 784 values.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training import plots
from training.data import gaussian_noise, load_mnist, speckle_noise
from training.detector import resolve_device
from training.errors import TrainingError
from training.models import DenseAutoencoder, build_model
from training.train import default_threads

NOISE_MODELS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "gaussian": gaussian_noise,
    "speckle": speckle_noise,
}
# Pixels are already in [0, 1]: no per-window z-score, a sigmoid output layer.
IMAGE_OPTIONS: dict[str, Any] = {"zscore": False, "output": "sigmoid"}
IMAGE_PIXELS = 28 * 28
DEFAULT_LATENT_DIMS = (2, 4, 8, 16, 32, 64)
N_FIGURE_IMAGES = 10


@dataclass(frozen=True)
class Split:
    """Flattened [n, 784] float32 images in [0, 1], train and held-out test."""

    train: np.ndarray
    test: np.ndarray
    source: str
    seed: int


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    batch_size: int
    lr: float
    device: str
    seed: int


def parse_mnist_spec(spec: str) -> Path:
    """`mnist:DIR` -> DIR; anything else is a user error."""
    if not spec.startswith("mnist:") or not spec[len("mnist:") :]:
        raise TrainingError(f"{spec!r}: the MNIST case studies need a data spec 'mnist:DIR'")
    return Path(spec[len("mnist:") :])


def load_split(spec: str, *, train_size: int, test_size: int, seed: int) -> Split:
    """Load the IDX images and split them at random (seeded) into train and test."""
    directory = parse_mnist_spec(spec)
    images, _ = load_mnist(directory)
    n = images.shape[0]
    if train_size < 1 or test_size < 1:
        raise TrainingError("--train-size and --test-size must be positive")
    if train_size + test_size > n:
        raise TrainingError(
            f"{directory}: {n} images, fewer than --train-size {train_size} "
            f"+ --test-size {test_size}"
        )
    flat = images.reshape(n, -1).astype(np.float32) / 255.0
    order = np.random.default_rng(seed).permutation(n)
    return Split(
        train=flat[order[:train_size]],
        test=flat[order[train_size : train_size + test_size]],
        source=str(directory),
        seed=seed,
    )


def image_model(variant: str, latent_dim: int, **options: Any) -> DenseAutoencoder:
    """A dense-family variant on flattened 28x28 images, [0, 1] in and out."""
    model = build_model(variant, IMAGE_PIXELS, latent_dim, **IMAGE_OPTIONS, **options)
    if not isinstance(model, DenseAutoencoder):
        raise TrainingError(f"variant {variant!r} is not a dense-family autoencoder")
    return model


def image_loss(model: DenseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per image (summed over pixels, mean over the batch).

    L1 against a sigmoid output stalls on MNIST at the all-black image (the pixel median),
    so the image studies train on cross-entropy, as image autoencoders usually do. In
    training mode the denoising variant corrupts its input; the target stays clean.
    """
    inp = model.corrupt(x) if model.training else x
    recon = model.decode(model.encode(inp))
    per_pixel = F.binary_cross_entropy(recon.clamp(1e-6, 1 - 1e-6), x, reduction="none")
    return per_pixel.sum(dim=1).mean()


def train_images(
    model: DenseAutoencoder, train: np.ndarray, cfg: LoopConfig, *, desc: str = "train"
) -> list[float]:
    """Mini-batch Adam on `image_loss`. Returns the mean training loss of every epoch."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history: list[float] = []
    n = train.shape[0]
    steps = max(1, -(-n // cfg.batch_size))
    bar = tqdm(total=cfg.epochs * steps, desc=desc, file=sys.stderr, leave=False)
    for _ in range(cfg.epochs):
        model.train()
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, cfg.batch_size):
            batch = torch.from_numpy(train[order[start : start + cfg.batch_size]]).to(device)
            loss = image_loss(model, batch)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total += float(loss.detach()) * batch.shape[0]
            bar.update(1)
        history.append(total / n)
        bar.set_postfix(loss=f"{history[-1]:.3f}")
    bar.close()
    return history


@torch.no_grad()
def reconstruct(model: DenseAutoencoder, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Model output for every row of x (eval mode, on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    parts = [
        model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(device))
        .detach()
        .cpu()
        .numpy()
        for i in range(0, x.shape[0], batch_size)
    ]
    return np.concatenate(parts).astype(np.float32)


@torch.no_grad()
def test_bce(model: DenseAutoencoder, x: np.ndarray) -> float:
    """The training objective on held-out clean images (eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    return float(image_loss(model, torch.from_numpy(x).to(device)))


def psnr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    mse = float(np.mean((reference.astype(np.float64) - estimate.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(1.0 / mse))


def _parse_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return values


def _parse_noise(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in NOISE_MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown noise model(s) {unknown or text!r}; choose from {sorted(NOISE_MODELS)}"
        )
    return names


def _parse_floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {text!r}") from exc
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers: {text!r}")
    return values


def _loop_config(args: argparse.Namespace) -> LoopConfig:
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise TrainingError("--epochs, --batch-size and --lr must be positive")
    return LoopConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
    )


def _write_summary(out: Path, name: str, summary: dict[str, Any]) -> Path:
    path = out / name
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Vanilla dense autoencoder per latent size: held-out loss, a grid per size, the sweep."""
    started = time.perf_counter()
    cfg = _loop_config(args)
    split = load_split(
        args.data, train_size=args.train_size, test_size=args.test_size, seed=args.seed
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shown = split.test[:N_FIGURE_IMAGES]
    results: list[dict[str, Any]] = []
    for latent in args.latent_dims:
        model = image_model("dense", latent)
        history = train_images(model, split.train, cfg, desc=f"latent {latent}")
        recon = reconstruct(model, split.test)
        l1 = float(np.abs(recon - split.test).sum(axis=1).mean())
        mse = float(np.mean((recon - split.test) ** 2))
        bce = test_bce(model, split.test)
        figure = plots.image_grid(
            shown,
            np.clip(recon[:N_FIGURE_IMAGES], 0.0, 1.0),
            out / f"reconstructions-latent{latent}.png",
            title=f"Dense autoencoder, latent {latent}: test BCE {bce:.1f}, "
            f"MSE {mse:.4f} per pixel",
        )
        results.append(
            {
                "latent_dim": latent,
                "test_bce_per_image": bce,
                "test_l1_per_image": l1,
                "test_mse_per_pixel": mse,
                "final_train_loss": history[-1],
                "parameters": sum(p.numel() for p in model.parameters()),
                "figure": figure.name,
            }
        )
        print(
            f"latent {latent:>3}: test BCE/image {bce:.2f}, L1/image {l1:.2f}, MSE/pixel {mse:.5f}",
            file=sys.stderr,
        )
    sweep = plots.latent_sweep(
        [r["latent_dim"] for r in results],
        [r["test_bce_per_image"] for r in results],
        out / "latent-sweep.png",
        loss_name="held-out BCE per image (sum over 784 pixels)",
    )
    summary = {
        "study": "latent-sweep",
        "model": "dense",
        "data": args.data,
        "train_images": int(split.train.shape[0]),
        "test_images": int(split.test.shape[0]),
        "config": asdict(cfg),
        "loss": "binary cross-entropy summed over the 784 pixels, mean over images",
        "results": results,
        "figure": sweep.name,
        "wall_s": round(time.perf_counter() - started, 2),
    }
    _write_summary(out, "summary.json", summary)
    return summary


def run_denoise(args: argparse.Namespace) -> dict[str, Any]:
    """A denoising autoencoder per noise model: noisy vs denoised error on held-out images."""
    started = time.perf_counter()
    cfg = _loop_config(args)
    split = load_split(
        args.data, train_size=args.train_size, test_size=args.test_size, seed=args.seed
    )
    sigmas: list[float] = args.sigma
    if len(sigmas) not in (1, len(args.noise)):
        raise TrainingError(f"--sigma: give one value or one per noise model ({len(args.noise)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for i, noise in enumerate(args.noise):
        sigma = sigmas[i] if len(sigmas) > 1 else sigmas[0]
        model = image_model("denoising", args.latent_dim, noise=noise, sigma=sigma)
        history = train_images(model, split.train, cfg, desc=f"{noise} σ={sigma}")
        # Test noise from the same model the training loss corrupts with, unclipped.
        noisy = NOISE_MODELS[noise](split.test, sigma, np.random.default_rng(cfg.seed + 1))
        denoised = reconstruct(model, noisy)
        mse_noisy = float(np.mean((noisy - split.test) ** 2))
        mse_denoised = float(np.mean((denoised - split.test) ** 2))
        figure = plots.denoising_rows(
            split.test[:N_FIGURE_IMAGES],
            np.clip(noisy[:N_FIGURE_IMAGES], 0.0, 1.0),
            denoised[:N_FIGURE_IMAGES],
            out / f"denoising-{noise}.png",
            title=f"{noise} noise σ={sigma}: PSNR {psnr(split.test, noisy):.1f} dB noisy → "
            f"{psnr(split.test, denoised):.1f} dB denoised",
        )
        results.append(
            {
                "noise": noise,
                "sigma": sigma,
                "mse_noisy": mse_noisy,
                "mse_denoised": mse_denoised,
                "psnr_noisy_db": psnr(split.test, noisy),
                "psnr_denoised_db": psnr(split.test, denoised),
                "final_train_loss": history[-1],
                "figure": figure.name,
            }
        )
        print(
            f"{noise} σ={sigma}: MSE noisy {mse_noisy:.4f} -> denoised {mse_denoised:.4f}",
            file=sys.stderr,
        )
    summary = {
        "study": "denoising",
        "model": "denoising",
        "latent_dim": args.latent_dim,
        "data": args.data,
        "train_images": int(split.train.shape[0]),
        "test_images": int(split.test.shape[0]),
        "config": asdict(cfg),
        "noisy_images": "x + σ·n (gaussian) or x + x·σ·n (speckle), not clipped",
        "results": results,
        "wall_s": round(time.perf_counter() - started, 2),
    }
    _write_summary(out, "summary.json", summary)
    return summary


def _common(p: argparse.ArgumentParser, epochs: int) -> None:
    p.add_argument("--data", required=True, help="mnist:DIR holding the IDX files (.gz or raw)")
    p.add_argument("--out", required=True, type=Path, help="folder for figures and summary.json")
    p.add_argument("--epochs", type=int, default=epochs, help="training epochs per model")
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to train"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the split and the training")
    p.add_argument("--threads", type=int, default=default_threads(), help="torch CPU threads")
    p.add_argument("--train-size", type=int, default=8000, help="images to train on")
    p.add_argument("--test-size", type=int, default=2000, help="held-out images to score")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="study", required=True, metavar="STUDY")
    sweep = sub.add_parser(
        "sweep",
        help="vanilla dense autoencoder over several latent sizes",
        description="Train the plain dense autoencoder once per latent size and draw its "
        "reconstructions and the error against the latent size.",
    )
    _common(sweep, epochs=20)
    sweep.add_argument(
        "--latent-dims",
        type=_parse_ints,
        default=list(DEFAULT_LATENT_DIMS),
        help="latent sizes to try, separated by commas",
    )
    denoise = sub.add_parser(
        "denoise",
        help="denoising autoencoder per noise model",
        description="Train a denoising autoencoder per noise model and draw noisy inputs next "
        "to their reconstructions.",
    )
    _common(denoise, epochs=20)
    denoise.add_argument(
        "--noise",
        type=_parse_noise,
        default=list(NOISE_MODELS),
        help="noise models, separated by commas: gaussian, speckle",
    )
    denoise.add_argument(
        "--sigma",
        type=_parse_floats,
        default=[0.5],
        help="noise scale: one value, or one per noise model",
    )
    denoise.add_argument("--latent-dim", type=int, default=32, help="code size")


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, args.threads))
    summary = run_sweep(args) if args.study == "sweep" else run_denoise(args)
    print(json.dumps({"out": str(args.out), "wall_s": summary["wall_s"]}))
    return 0
