"""Shared helpers for the bench scripts: timing, ORT sessions, FLOP counts, the seed's LSTM.

Needs only numpy, torch and onnxruntime at import time (what `bench/gpu.py` finds on a bare
GPU machine); training modules that pull in onnx or tqdm are imported where they are used.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.sections import update_section  # noqa: E402,F401  (re-exported)
from monitor.beats import synthetic_beats  # noqa: E402
from training.data import load_dataset  # noqa: E402  (numpy only)

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """Median seconds per call over `repeats` timed calls (after warm-up)."""

    median_s: float
    repeats: int
    min_s: float


def time_call(
    fn: Callable[[], object], *, warmup: int = 2, min_repeats: int = 3, min_time_s: float = 0.5
) -> Timing:
    """Call `fn` warm-up times, then until both min_repeats and min_time_s are reached."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_repeats or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing(statistics.median(samples), len(samples), min(samples))


def ort_session(
    model: Path | str | bytes,
    *,
    threads: int = 0,
    opt: str = "all",
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> ort.InferenceSession:
    """An ONNX Runtime session with the given intra-op threads and optimisation level."""
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = levels[opt]
    so.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=so, providers=list(providers))


def model_metadata(session: ort.InferenceSession) -> dict[str, str]:
    """The model's `metadata_props` as a dict (empty when the file has none)."""
    return dict(session.get_modelmeta().custom_metadata_map)


def window_length(session: ort.InferenceSession, default: int = 140) -> int:
    """Window length from metadata, else from a static input shape, else `default`."""
    meta = model_metadata(session)
    if "ecg.window_length" in meta:
        return int(meta["ecg.window_length"])
    dim = session.get_inputs()[0].shape[-1]
    return dim if isinstance(dim, int) else default


def beats(n: int, length: int = 140, seed: int = 0) -> np.ndarray:
    """`n` float32 synthetic ECG windows (normal and anomalous mixed), deterministic by seed."""
    x, _ = synthetic_beats(n, length=length, seed=seed)
    return np.ascontiguousarray(x, dtype=np.float32)


# --- models under test ----------------------------------------------------------------


def mflop_per_window(model: Path | str, length: int | None = None) -> float:
    """MFLOP per window as `ecg-train compare` counts it (2 x multiply-adds of MatMul/LSTM...)."""
    from training.compare import onnx_flops  # noqa: PLC0415 (needs onnx)

    if length is None:
        length = window_length(ort_session(model, threads=1))
    return onnx_flops(Path(model), length)[0] / 1e6


def prepare_models(
    variants: Sequence[str],
    workdir: Path,
    *,
    data_spec: str = "synthetic:2000",
    epochs: int = 2,
    latent_dims: dict[str, int] | None = None,
) -> dict[str, Path]:
    """Train each variant briefly with its recipe, on `ecg-train fit`'s torch thread count,
    and export it: variant -> .onnx."""
    from training.export import export_run  # noqa: PLC0415 (needs onnx)
    from training.train import FitConfig, default_threads, fit  # noqa: PLC0415 (needs tqdm)

    dataset = load_dataset(data_spec)
    models: dict[str, Path] = {}
    for variant in variants:
        latent = (latent_dims or {}).get(variant)
        cfg = FitConfig.for_variant(variant, epochs=epochs, device="cpu", latent_dim=latent)
        run_dir = with_threads(
            default_threads(), partial(fit, cfg, dataset, workdir / variant, progress=False)
        )
        models[variant] = export_run(run_dir, workdir / f"{variant}.onnx")
    return models


# --- the seed's model and loops (the baseline) -----------------------------------------


def seed_lstm(length: int = 140, embedding: int = 128) -> nn.Module:
    """The seed's RecurrentAutoencoder (one window in, shape [length, 1])."""

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn1 = nn.LSTM(1, 2 * embedding, batch_first=True)
            self.rnn2 = nn.LSTM(2 * embedding, embedding, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.reshape((1, length, 1))
            x, (_, _) = self.rnn1(x)
            x, (hidden_n, _) = self.rnn2(x)
            out: torch.Tensor = hidden_n.reshape((1, embedding))
            return out

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn1 = nn.LSTM(embedding, embedding, batch_first=True)
            self.rnn2 = nn.LSTM(embedding, 2 * embedding, batch_first=True)
            self.output_layer = nn.Linear(2 * embedding, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.repeat(length, 1)
            x = x.reshape((1, length, embedding))
            x, (_, _) = self.rnn1(x)
            x, (_, _) = self.rnn2(x)
            x = x.reshape((length, 2 * embedding))
            return self.output_layer(x)  # type: ignore[no-any-return]

    class RecurrentAutoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = Encoder()
            self.decoder = Decoder()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.encoder(x))  # type: ignore[no-any-return]

    torch.manual_seed(0)
    return RecurrentAutoencoder()


def with_threads(n: int, fn: Callable[[], T]) -> T:
    """Run `fn` with torch using `n` intra-op threads, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def best_seed_rate(fn: Callable[[int], float], threads: Sequence[int]) -> tuple[float, int]:
    """The seed loop's best windows/s over torch thread counts, and the count that gave it.

    Taking its best case keeps the ratios against it conservative: on a shared 2-core box
    torch's default 2 OpenMP threads can be many times slower than 1.
    """
    rates = {n: with_threads(n, partial(fn, n)) for n in dict.fromkeys(threads)}
    best = max(rates, key=lambda n: rates[n])
    return rates[best], best


def seed_predict_rate(windows: np.ndarray, embedding: int = 128) -> float:
    """Windows/s of the seed's predict(): one window at a time, torch.no_grad, L1 sum."""
    model = seed_lstm(windows.shape[1], embedding).eval()
    criterion = torch.nn.L1Loss(reduction="sum")
    seqs = [torch.tensor(w).unsqueeze(1) for w in windows]
    with torch.no_grad():
        for s in seqs[:3]:
            model(s)
        t0 = time.perf_counter()
        for s in seqs:
            pred = model(s)
            criterion(pred, s).item()
            pred.numpy().flatten()
        return len(seqs) / (time.perf_counter() - t0)


def seed_train_rate(windows: np.ndarray, embedding: int = 128) -> tuple[float, float]:
    """(train, validation) windows/s of the seed's epoch loop: one window per Adam step.

    Three untimed steps first, so one-off set-up (allocator, Adam state) is not extrapolated.
    """
    model = seed_lstm(windows.shape[1], embedding)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.L1Loss(reduction="sum")
    seqs = [torch.tensor(w).unsqueeze(1) for w in windows]
    model.train()
    for s in seqs[:3]:
        opt.zero_grad()
        criterion(model(s), s).backward()
        opt.step()
    t0 = time.perf_counter()
    losses = []
    for s in seqs:
        opt.zero_grad()
        loss = criterion(model(s), s)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    train_rate = len(seqs) / (time.perf_counter() - t0)
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in seqs:
            criterion(model(s), s).item()
    return train_rate, len(seqs) / (time.perf_counter() - t0)


# --- reporting ----------------------------------------------------------------------


def machine() -> str:
    """One line naming the CPU, its core count and the library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", text)
        if found:
            cpu = found.group(1).strip()
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores", f"Python {platform.python_version()}"]
    for mod in ("onnxruntime", "torch"):
        if mod in sys.modules:
            parts.append(f"{mod} {sys.modules[mod].__version__}")
    return "; ".join(parts)


def gpu_name() -> str | None:
    """`nvidia-smi` GPU name(s), or None without a driver."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return ", ".join(names) or None


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def command_line() -> str:
    """The command that produced a table, as typed (relative script path)."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(REPO)
    return " ".join(["python", str(script), *sys.argv[1:]])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; floats already formatted by the caller."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float, digits: int = 3) -> str:
    """Numbers for tables: 3 significant digits, thousands separators for large ones."""
    if np.isnan(value):
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"
