"""GPU throughput of the exported model: ONNX Runtime CUDA (IO binding) and a torch CUDA
reference of the same model in fp32, bf16 and fp16 (torch.autocast), batch 64 .. 32768.

Runs with only numpy, torch and onnxruntime installed (no project install needed):

    PYTHONPATH=. python bench/gpu.py --run RUN_DIR --model model.onnx --benchmarks BENCHMARKS.md
    PYTHONPATH=. python bench/gpu.py --variant lstm --latent-dim 64      # architecture only
    PYTHONPATH=. python bench/gpu.py --cpu --quick                       # smoke run, no GPU
    PYTHONPATH=. python bench/gpu.py --dry-run                           # what would run

    # the issue-14 suite, one command: LSTM E=64, the seed's LSTM E=128 and the dense model,
    # ONNX Runtime (CUDA EP if it loads) and torch CUDA, fp32/tf32/bf16/fp16, batch 64..32768
    PYTHONPATH=. python bench/gpu.py --prepare gpu-models          # here (needs onnx): ONNX files
    PYTHONPATH=. python bench/gpu.py --suite --models gpu-models --benchmarks BENCHMARKS.md
    PYTHONPATH=. python bench/gpu.py --smoke                       # the same suite, tiny, on CPU

Without CUDA (and without --cpu/--dry-run/--smoke) it says why and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    beats,
    command_line,
    fmt,
    gpu_name,
    machine,
    markdown_table,
    now_utc,
    update_section,
)
from training.data import load_dataset
from training.detector import load_checkpoint, model_from_checkpoint
from training.models import build_model

GPU_BATCHES = (64, 256, 1024, 4096, 16384, 32768)
# (variant, latent dim) of --suite; --smoke shrinks the latent dims to SMOKE_DIMS
SUITE = (("lstm", 64), ("lstm", 128), ("dense", 16))
SMOKE_DIMS = {64: 8, 128: 16, 16: 8}
CPU_BATCHES = (64, 256)
NO_CUDA = 2


@dataclass(frozen=True)
class Row:
    backend: str
    precision: str
    batch: int
    ms_per_batch: float
    windows_s: float
    windows_s_with_copies: float
    max_rel_score_err: float
    roc_auc: float | None
    note: str = ""
    windows_s_in_flight: float = float("nan")


@dataclass(frozen=True)
class Environment:
    """What this machine offers, found by trying rather than by asking."""

    torch_cuda: bool
    torch_device_name: str | None
    ort_version: str
    ort_cuda: bool
    ort_providers: list[str]
    ort_reason: str
    gpu: str | None


def ort_cuda_session(model: Path) -> tuple[Any, list[str], str]:
    """(session or None, providers it really got, reason) for the CUDA execution provider."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None, [], f"this onnxruntime build has no CUDA EP ({ort.get_available_providers()})"
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(
            str(model), so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
    except Exception as exc:
        return None, [], f"CUDA EP session failed: {exc}"
    got = list(sess.get_providers())
    if "CUDAExecutionProvider" not in got:
        return None, got, "CUDA EP listed but did not load (CUDA/cuDNN libraries missing?)"
    return sess, got, "loaded"


def detect(model: Path | None) -> Environment:
    torch_cuda = bool(torch.cuda.is_available())
    name = torch.cuda.get_device_name(0) if torch_cuda else None
    providers: list[str] = []
    if model is None:
        ort_cuda, reason = False, "no --model given"
    else:
        sess, providers, reason = ort_cuda_session(model)
        ort_cuda = sess is not None
    return Environment(torch_cuda, name, ort.__version__, ort_cuda, providers, reason, gpu_name())


# --- timing -----------------------------------------------------------------------------


def timed(fn: Callable[[], object], sync: Callable[[], None], min_time_s: float) -> float:
    """Median seconds per call: warm-up, then repeated (call; sync) until min_time_s."""
    for _ in range(3):
        fn()
    sync()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < 5 or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples))


def bench_ort(
    model: Path,
    batches: Sequence[int],
    *,
    length: int,
    min_time_s: float,
    device: str,
    eval_x: np.ndarray | None,
    eval_y: np.ndarray | None,
) -> list[Row]:
    """ORT with IO binding: input and outputs stay on the device; a second figure adds copies."""
    if device == "cuda":
        sess, _, reason = ort_cuda_session(model)
        if sess is None:
            return []
        dev, dev_id = "cuda", 0
    else:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        dev, dev_id = "cpu", 0
        reason = "CPU EP (smoke run)"
    name = sess.get_inputs()[0].name
    rows: list[Row] = []
    for batch in batches:
        x = beats(batch, length, seed=batch)
        x_dev = ort.OrtValue.ortvalue_from_numpy(x, dev, dev_id)
        io = sess.io_binding()
        io.bind_ortvalue_input(name, x_dev)
        io.bind_output("reconstruction", dev, dev_id)
        io.bind_output("score", dev, dev_id)
        t = timed(partial(sess.run_with_iobinding, io), io.synchronize_outputs, min_time_s)

        def with_copies(x: np.ndarray = x) -> None:
            b = sess.io_binding()
            b.bind_cpu_input(name, x)
            b.bind_output("reconstruction", "cpu")
            b.bind_output("score", "cpu")
            sess.run_with_iobinding(b)
            b.copy_outputs_to_cpu()

        t_copy = timed(with_copies, lambda: None, min_time_s)
        auc = None
        if eval_x is not None and eval_y is not None and batch == batches[0]:
            auc = _auc(_ort_scores(sess, name, eval_x), eval_y)
        rows.append(
            Row(
                backend=f"onnxruntime {ort.__version__} {dev.upper()} EP, IO binding",
                precision="fp32",
                batch=batch,
                ms_per_batch=t * 1e3,
                windows_s=batch / t,
                windows_s_with_copies=batch / t_copy,
                max_rel_score_err=0.0,
                roc_auc=auc,
                note=reason,
            )
        )
        print(f"  ort {dev} batch={batch}: {batch / t:,.0f} windows/s", file=sys.stderr)
    return rows


def _ort_scores(sess: Any, name: str, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    return np.concatenate(
        [sess.run(["score"], {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    )


def _auc(scores: np.ndarray, is_anomaly: np.ndarray) -> float:
    """ROC AUC as Mann-Whitney U (training.evaluate needs matplotlib, absent on GPU hosts)."""
    neg = np.sort(scores[~is_anomaly])
    pos = scores[is_anomaly]
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (pos.size * neg.size))


def load_torch_model(args: argparse.Namespace, length: int) -> tuple[Any, str]:
    """The model to time in torch: trained weights from --run, else the bare architecture."""
    if args.run:
        model = model_from_checkpoint(load_checkpoint(args.run))
        return model, f"trained weights from {args.run}"
    return build_model(args.variant, length, args.latent_dim), (
        f"{args.variant} E={args.latent_dim}, untrained weights (timing only)"
    )


def bench_torch(
    args: argparse.Namespace,
    batches: Sequence[int],
    *,
    length: int,
    device: str,
    eval_x: np.ndarray | None,
    eval_y: np.ndarray | None,
) -> list[Row]:
    """torch reference: strict fp32, TF32, then bf16 and fp16 under autocast; errors vs fp32."""
    model, origin = load_torch_model(args, length)
    model = model.to(device).eval()
    dev = torch.device(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # name -> (autocast dtype or None, TF32 allowed). "fp32" is strict fp32: cuDNN would
    # otherwise run its RNNs and convolutions in TF32 by default.
    modes = {
        "fp32": (None, False),
        "tf32": (None, True),
        "bf16": (torch.bfloat16, False),
        "fp16": (torch.float16, False),
    }
    wanted = ["fp32", *(p for p in args.precisions.split(",") if p in modes and p != "fp32")]
    if device != "cuda" and "tf32" in wanted:
        wanted.remove("tf32")  # no TF32 on CPU

    def set_tf32(on: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on

    probe = torch.from_numpy(beats(min(batches), length)).to(dev)

    def run_both(x: torch.Tensor, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            if dtype is None:
                return model.score(x)  # type: ignore[no-any-return]
            with torch.autocast(device_type=device, dtype=dtype):
                score, recon = model.score(x)
                return score.float(), recon

    def run(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        return run_both(x, dtype)[0]

    set_tf32(False)
    ref = run(probe, None)
    rows: list[Row] = []
    label = f"torch {torch.__version__} {device.upper()}"
    for precision in wanted:
        dtype, tf32 = modes[precision]
        set_tf32(tf32)
        try:
            err = float(((run(probe, dtype) - ref).abs() / ref.abs().clamp_min(1e-6)).max())
        except RuntimeError as exc:
            rows.append(
                Row(
                    label,
                    precision,
                    0,
                    float("nan"),
                    float("nan"),
                    float("nan"),
                    float("nan"),
                    None,
                    f"unsupported: {str(exc)[:80]}",
                )
            )
            continue
        auc = None
        if eval_x is not None and eval_y is not None and args.run:  # trained weights only
            xs = torch.from_numpy(eval_x).to(dev)
            scores = torch.cat([run(xs[i : i + 4096], dtype) for i in range(0, len(xs), 4096)])
            auc = _auc(scores.cpu().numpy(), eval_y)
        for batch in batches:
            x_host = torch.from_numpy(beats(batch, length, seed=batch))
            if device == "cuda":
                x_host = x_host.pin_memory()
            x = x_host.to(dev)
            try:
                t = timed(partial(run, x, dtype), sync, args.min_time)

                def with_copies(xh: torch.Tensor = x_host, d: Any = dtype) -> None:
                    score, recon = run_both(xh.to(dev, non_blocking=True), d)
                    score.cpu(), recon.cpu()

                t_copy = timed(with_copies, sync, args.min_time)
                t_flight = (
                    in_flight(
                        run_both,
                        x_host,
                        dtype,
                        dev=dev,
                        streams=args.streams,
                        min_time_s=args.min_time,
                    )
                    if device == "cuda"
                    else float("nan")
                )
            except RuntimeError as exc:  # out of memory at the largest batches, say
                rows.append(
                    Row(
                        label,
                        precision,
                        batch,
                        float("nan"),
                        float("nan"),
                        float("nan"),
                        err,
                        auc,
                        f"failed: {str(exc)[:80]}",
                    )
                )
                if device == "cuda":
                    torch.cuda.empty_cache()
                continue
            rows.append(
                Row(
                    label,
                    precision,
                    batch,
                    t * 1e3,
                    batch / t,
                    batch / t_copy,
                    err,
                    auc,
                    origin,
                    windows_s_in_flight=batch / t_flight,
                )
            )
            print(
                f"  torch {device} {precision} batch={batch}: {batch / t:,.0f} windows/s",
                file=sys.stderr,
            )
    return rows


def in_flight(
    run_both: Callable[[torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor]],
    x_host: torch.Tensor,
    dtype: Any,
    *,
    dev: torch.device,
    streams: int,
    min_time_s: float,
    rounds: int = 4,
) -> float:
    """Seconds per batch with `streams` batches in flight: each stream copies its pinned
    input in, scores it and copies score and reconstruction back, overlapping the others."""
    pool = [torch.cuda.Stream() for _ in range(streams)]  # type: ignore[no-untyped-call]
    batch, length = x_host.shape
    scores = [torch.empty(batch, pin_memory=True) for _ in pool]
    recons = [torch.empty(batch, length, pin_memory=True) for _ in pool]

    def go() -> None:
        for i in range(rounds * streams):
            k = i % streams
            with torch.cuda.stream(pool[k]):
                score, recon = run_both(x_host.to(dev, non_blocking=True), dtype)
                scores[k].copy_(score.float(), non_blocking=True)
                recons[k].copy_(recon.float(), non_blocking=True)

    return timed(go, torch.cuda.synchronize, min_time_s) / (rounds * streams)


def eval_data(spec: str | None, length: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Held-out windows and anomaly labels for the ROC AUC column (optional)."""
    if not spec:
        return None, None
    ds = load_dataset(spec)
    if ds.window_length != length:
        raise SystemExit(f"gpu.py: {spec} has windows of {ds.window_length}, model wants {length}")
    return ds.test_x.astype(np.float32), ds.test_is_anomaly


def report(rows: list[Row], env: Environment, args: argparse.Namespace, origin: str) -> str:
    header = (
        f"GPU inference ({now_utc()}). GPU: {env.gpu or env.torch_device_name or 'none'}; "
        f"host: {machine()}.\n"
        f"ONNX Runtime CUDA EP: {env.ort_reason}. Model: {origin}.\n"
        f"Command: `PYTHONPATH=. {command_line()}`\n"
        "windows/s: input already on the device; 'with copies': host (pinned) -> device -> "
        "score and reconstruction back to host per batch; 'in flight': the same with "
        f"{args.streams} CUDA streams overlapping copies and compute.\n"
        "max rel score err: |score - fp32 score| / fp32 score, largest over the same windows.\n"
    )
    table = markdown_table(
        [
            "backend",
            "precision",
            "batch",
            "ms/batch",
            "windows/s",
            "windows/s with copies",
            "in flight",
            "max rel score err",
            "ROC AUC",
            "note",
        ],
        [
            [
                r.backend,
                r.precision,
                r.batch,
                fmt(r.ms_per_batch),
                fmt(r.windows_s),
                fmt(r.windows_s_with_copies),
                fmt(r.windows_s_in_flight),
                f"{r.max_rel_score_err:.2e}",
                "–" if r.roc_auc is None else f"{r.roc_auc:.4f}",
                r.note,
            ]
            for r in rows
        ],
    )
    return header + "\n" + table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, help="exported .onnx (for the ONNX Runtime rows)")
    p.add_argument("--run", type=Path, help="run directory (trained weights for the torch rows)")
    p.add_argument(
        "--variant", help="architecture when no --run is given (default: --model's, else lstm)"
    )
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--length", type=int, default=140)
    p.add_argument("--batches", default=None, help="comma list (default 64..32768 on GPU)")
    p.add_argument("--precisions", default="fp32,tf32,bf16,fp16", help="fp32 always runs")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds timed per config")
    p.add_argument("--streams", type=int, default=2, help="CUDA streams for 'in flight'")
    p.add_argument("--data", help="data spec for a ROC AUC column (e.g. synthetic:4000)")
    p.add_argument("--cpu", action="store_true", help="run the same code on CPU (smoke test)")
    p.add_argument("--quick", action="store_true", help="tiny settings")
    p.add_argument("--dry-run", action="store_true", help="detect and print the plan only")
    p.add_argument("--json", type=Path, help="write rows and environment as JSON")
    p.add_argument("--benchmarks", type=Path, help="update the gpu section of this file")
    p.add_argument(
        "--suite", action="store_true", help="LSTM E=64, LSTM E=128 and dense in one run"
    )
    p.add_argument("--models", type=Path, help="--suite: folder of --prepare's ONNX files")
    p.add_argument("--prepare", type=Path, help="write the suite's ONNX files here and exit")
    p.add_argument(
        "--smoke", action="store_true", help="the suite, tiny, on CPU (end-to-end check)"
    )
    return p


def suite_file(folder: Path, variant: str, dim: int) -> Path:
    return folder / f"{variant}-e{dim}.onnx"


def prepare(folder: Path, length: int, dims: dict[int, int] | None = None) -> list[Path]:
    """Export the suite's architectures (untrained weights: timing only) as contract ONNX."""
    from training.export import ScoringGraph, _torch_export  # noqa: PLC0415 (needs onnx)

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for variant, dim in SUITE:
        d = (dims or {}).get(dim, dim)
        path = suite_file(folder, variant, d)
        torch.manual_seed(0)
        graph = ScoringGraph(build_model(variant, length, d)).eval()
        _torch_export(graph, length, path)
        out.append(path)
        print(f"  wrote {path}", file=sys.stderr)
    return out


def run_suite(args: argparse.Namespace, env: Environment, device: str, batches: list[int]) -> int:
    """Every suite model through ORT (when its file is there) and torch; one table."""
    t0 = time.perf_counter()
    dims = SMOKE_DIMS if args.smoke else {}
    folder = args.models
    if args.smoke and folder is None:
        import tempfile  # noqa: PLC0415

        folder = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
        prepare(folder, args.length, dims)
    rows: list[Row] = []
    for variant, dim in SUITE:
        d = dims.get(dim, dim)
        args.variant, args.latent_dim, args.run = variant, d, None
        tag = f"{variant} E={d}"
        path = suite_file(folder, variant, d) if folder else None
        part: list[Row] = []
        if path is not None and path.exists() and (env.ort_cuda or device == "cpu"):
            part += bench_ort(
                path,
                batches,
                length=args.length,
                min_time_s=args.min_time,
                device=device,
                eval_x=None,
                eval_y=None,
            )
        if env.torch_cuda or device == "cpu":
            part += bench_torch(
                args, batches, length=args.length, device=device, eval_x=None, eval_y=None
            )
        rows += [dataclasses.replace(r, backend=f"{tag}: {r.backend}") for r in part]
        print(f"  {tag} done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    origin = (
        "suite: "
        + ", ".join(f"{v} E={dims.get(e, e)}" for v, e in SUITE)
        + (" (untrained weights: timing only)")
    )
    text = report(rows, env, args, origin)
    text += f"\nWall time of the whole suite: {time.perf_counter() - t0:.0f} s.\n"
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps({"environment": asdict(env), "rows": [asdict(r) for r in rows]}, indent=2)
        )
    if args.benchmarks and not args.smoke:
        update_section(args.benchmarks, "gpu", text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.prepare:
        prepare(args.prepare, args.length)
        return 0
    if args.smoke:
        args.cpu, args.quick, args.suite = True, True, True
    if args.suite and not args.quick:
        args.min_time = min(args.min_time, 0.25)  # the whole suite in well under 5 minutes
    probe = args.model
    if args.suite and args.models is not None:
        probe = next((p for v, d in SUITE if (p := suite_file(args.models, v, d)).exists()), None)
    env = detect(probe)
    device = "cpu" if args.cpu else "cuda"
    default = CPU_BATCHES if args.cpu else GPU_BATCHES
    batches = [int(b) for b in args.batches.split(",")] if args.batches else list(default)
    if args.quick:
        batches, args.min_time = batches[:2], 0.05
        if args.cpu:  # smoke run on a possibly shared CPU: one torch thread, small model
            args.latent_dim = min(args.latent_dim, 8)
            torch.set_num_threads(1)
    plan = {
        "device": device,
        "batches": batches,
        "torch_rows": env.torch_cuda or args.cpu,
        "ort_rows": args.model is not None and (env.ort_cuda or args.cpu),
        "environment": asdict(env),
    }
    if args.dry_run:
        print(json.dumps(plan, indent=2))
        return 0
    if not args.cpu and not (env.torch_cuda or env.ort_cuda):
        print(
            "gpu.py: no usable CUDA device: torch.cuda.is_available() is False; ONNX Runtime "
            f"CUDA EP: {env.ort_reason}. Run on a GPU machine, or use --cpu for a "
            "smoke run.",
            file=sys.stderr,
        )
        return NO_CUDA
    if args.suite:
        return run_suite(args, env, device, batches)
    length = args.length
    if args.model is not None:
        meta = (
            ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
            .get_modelmeta()
            .custom_metadata_map
        )
        length = int(meta.get("ecg.window_length", length))
        args.variant = args.variant or meta.get("ecg.variant")
    args.variant = args.variant or "lstm"
    eval_x, eval_y = eval_data(args.data, length)
    rows: list[Row] = []
    if plan["ort_rows"]:
        rows += bench_ort(
            args.model,
            batches,
            length=length,
            min_time_s=args.min_time,
            device=device,
            eval_x=eval_x,
            eval_y=eval_y,
        )
    origin = str(args.model) if args.model else "no ONNX model"
    if plan["torch_rows"]:
        torch_rows = bench_torch(
            args, batches, length=length, device=device, eval_x=eval_x, eval_y=eval_y
        )
        rows += torch_rows
        origin = next((r.note for r in torch_rows if r.batch), origin)
    text = report(rows, env, args, origin)
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps({"environment": asdict(env), "rows": [asdict(r) for r in rows]}, indent=2)
        )
    if args.benchmarks:
        update_section(args.benchmarks, "gpu", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
