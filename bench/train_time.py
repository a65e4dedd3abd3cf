"""Training time per epoch and to convergence, per variant, against the seed's epoch loop.

    python bench/train_time.py                       # synthetic:500, every variant
    python bench/train_time.py --data ucr:../shared/data/ECG5000/ECG5000_TRAIN.arff
    python bench/train_time.py --quick

Each variant is fitted with its recipe (`ecg-train fit` defaults: Adam, batch, epochs, early
stopping, one torch thread); --max-epochs/--lstm-max-epochs cap the epochs, and the table says
whether early stopping ended a run or the epoch limit did. The baseline is the seed's loop
(one window per Adam step, then one window per validation call), timed on a few hundred
windows in the same run and extrapolated to this data's train + validation size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    best_seed_rate,
    command_line,
    fmt,
    machine,
    markdown_table,
    now_utc,
    seed_train_rate,
    update_section,
)
from training.data import Dataset, load_dataset

VARIANTS = ("dense", "sparse-l1", "sparse-kl", "contractive", "denoising", "vae", "lstm")
SEED_EPOCHS = 150  # the seed's training schedule


@dataclass(frozen=True)
class Row:
    variant: str
    latent_dim: int
    batch_size: int
    epochs_cap: int
    epochs_run: int
    best_epoch: int
    early_stopped: bool
    seconds_per_epoch: float
    train_windows_s: float
    seconds_to_best: float
    seconds_total: float
    best_val_loss: float
    speedup_per_epoch: float


def fit_variant(
    variant: str,
    dataset: Dataset,
    workdir: Path,
    *,
    epochs_cap: int | None,
    baseline_epoch_s: float,
    latent_dim: int | None = None,
) -> Row:
    """Fit with the recipe under an epoch cap; timings from the run's own record."""
    from training.train import FitConfig, fit  # noqa: PLC0415 (tqdm, torch: training extra)

    recipe = FitConfig.for_variant(variant)
    cfg = FitConfig.for_variant(
        variant,
        epochs=min(recipe.epochs, epochs_cap or recipe.epochs),
        device="cpu",
        latent_dim=latent_dim,
    )
    run_dir = fit(cfg, dataset, workdir / variant, progress=False)
    record = json.loads((run_dir / "config.json").read_text())
    epochs_run = int(record["epochs_run"])
    seconds = float(record["train_seconds"])
    per_epoch = seconds / epochs_run
    n_train = len(dataset.train)
    return Row(
        variant=variant,
        latent_dim=cfg.latent_dim,
        batch_size=cfg.batch_size,
        epochs_cap=cfg.epochs,
        epochs_run=epochs_run,
        best_epoch=int(record["best_epoch"]),
        early_stopped=epochs_run < cfg.epochs,
        seconds_per_epoch=per_epoch,
        train_windows_s=n_train / per_epoch,
        seconds_to_best=per_epoch * int(record["best_epoch"]),
        seconds_total=seconds,
        best_val_loss=float(record["best_val_loss"]),
        speedup_per_epoch=baseline_epoch_s / per_epoch,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="synthetic:500", help="data spec (synthetic[:N], ucr:PATH)")
    p.add_argument("--variants", default="all", help="comma list or 'all'")
    p.add_argument("--max-epochs", type=int, help="epoch cap, dense family (default: recipe)")
    p.add_argument("--lstm-max-epochs", type=int, help="epoch cap, lstm (default: recipe)")
    p.add_argument("--baseline-windows", type=int, default=120, help="windows timed, seed loop")
    p.add_argument("--baseline-embedding", type=int, help="seed LSTM E (default: lstm recipe's)")
    p.add_argument("--torch-threads", type=int, help="torch threads (default: ecg-train fit's, 1)")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    p.add_argument("--json", type=Path)
    p.add_argument("--benchmarks", type=Path, help="update this file's train-time section")
    p.add_argument("--workdir", type=Path, help="keep the run directories here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from training.train import FitConfig, default_threads  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    default_torch_threads = torch.get_num_threads()
    # `ecg-train fit` runs torch on default_threads() (1); time the trainer the same way.
    torch.set_num_threads(args.torch_threads or default_threads())
    variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    if args.quick:
        args.max_epochs, args.lstm_max_epochs, args.baseline_windows = 2, 1, 8
        if args.variants == "all":
            variants = ["dense", "lstm"]
        if args.data == "synthetic:500":
            args.data = "synthetic:200"
    dataset = load_dataset(args.data)
    n_train, n_val = len(dataset.train), len(dataset.val)
    base_e = args.baseline_embedding or FitConfig.for_variant("lstm").latent_dim
    if args.quick:
        base_e = min(base_e, 16)
    print(f"baseline: seed loop, LSTM E={base_e}, {args.baseline_windows} windows", file=sys.stderr)
    seed_windows = dataset.train[: args.baseline_windows]
    rates: dict[int, tuple[float, float]] = {}

    def seed_epoch_seconds(n: int) -> float:
        rates[n] = seed_train_rate(seed_windows, base_e)
        return -(n_train / rates[n][0] + n_val / rates[n][1])  # best = shortest epoch

    seed_thread_counts = (1,) if args.quick else (1, default_torch_threads)
    _, seed_threads = best_seed_rate(seed_epoch_seconds, seed_thread_counts)
    train_rate, val_rate = rates[seed_threads]
    seed_epoch_s = n_train / train_rate + n_val / val_rate
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ecg-train-time-") as tmp:
        workdir = args.workdir or Path(tmp)
        for variant in variants:
            cap = args.lstm_max_epochs if variant == "lstm" else args.max_epochs
            print(f"fit {variant} (cap {cap or 'recipe'} epochs) ...", file=sys.stderr)
            latent = min(base_e, 16) if args.quick and variant == "lstm" else None
            rows.append(
                fit_variant(
                    variant,
                    dataset,
                    workdir,
                    epochs_cap=cap,
                    baseline_epoch_s=seed_epoch_s,
                    latent_dim=latent,
                )
            )
    header = (
        f"Training time ({now_utc()}), data `{args.data}`: {n_train} train + {n_val} validation "
        f"windows, CPU, torch threads {torch.get_num_threads()}.\n"
        f"Machine: {machine()}.\nCommand: `{command_line()}`\n\n"
        f"Baseline: the seed's loop (LSTM E={base_e}, one window per Adam step, one per "
        f"validation call; best of torch threads {seed_thread_counts}: {seed_threads} "
        f"won) timed on {min(args.baseline_windows, n_train)} windows "
        f"and **extrapolated** to {n_train} + {n_val} windows: "
        f"{seed_epoch_s:.1f} s per epoch, {SEED_EPOCHS} epochs = "
        f"{seed_epoch_s * SEED_EPOCHS / 60:.1f} min.\n"
        "Time to best = seconds per epoch x best epoch; 'cap N': the run reached its epoch "
        "limit N before early stopping ended it.\n"
    )
    table = markdown_table(
        [
            "variant",
            "E",
            "batch",
            "s/epoch",
            "train windows/s",
            "epochs run (best)",
            "stopped by",
            "time to best",
            "× seed epoch",
        ],
        [
            [
                r.variant,
                r.latent_dim,
                r.batch_size,
                fmt(r.seconds_per_epoch),
                fmt(r.train_windows_s),
                f"{r.epochs_run} ({r.best_epoch})",
                "early stop" if r.early_stopped else f"cap {r.epochs_cap}",
                f"{r.seconds_to_best:.1f} s",
                fmt(r.speedup_per_epoch),
            ]
            for r in rows
        ]
        + [
            [
                "seed loop (extrapolated)",
                base_e,
                1,
                fmt(seed_epoch_s),
                fmt(train_rate),
                f"{SEED_EPOCHS} (fixed)",
                "–",
                f"{seed_epoch_s * SEED_EPOCHS:.0f} s",
                "1",
            ]
        ],
    )
    print(header)
    print(table)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "date": now_utc(),
                    "command": command_line(),
                    "data": args.data,
                    "n_train": n_train,
                    "n_val": n_val,
                    "baseline": {
                        "embedding": base_e,
                        "windows_timed": min(args.baseline_windows, n_train),
                        "train_windows_s": train_rate,
                        "val_windows_s": val_rate,
                        "epoch_s_extrapolated": seed_epoch_s,
                        "torch_threads": seed_threads,
                    },
                    "rows": [asdict(r) for r in rows],
                },
                indent=2,
            )
        )
    if args.benchmarks:
        update_section(args.benchmarks, "train-time", header + "\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
