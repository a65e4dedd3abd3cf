"""Model-only throughput: ONNX Runtime CPU per variant x batch x threads x graph optimisation.

    python bench/model_throughput.py                 # train+export every variant briefly, measure
    python bench/model_throughput.py --models a.onnx b.onnx
    python bench/model_throughput.py --quick --json /tmp/tp.json
    python bench/model_throughput.py --compare REPORT_DIR/compare.json --int8   # + Pareto table

Prints Markdown tables (windows/s, ms/batch, MFLOP/window, GFLOP/s, % of a plain ORT GEMM's
GFLOP/s at the same thread count) and the ratio against the seed's one-window-at-a-time
torch loop for the LSTM, measured in the same run. `--int8` adds each model's dynamic int8
quantisation (training/quantize.py) as an extra row set. `--compare` takes the trained models
of an `ecg-train compare` run and adds the Pareto table: ROC AUC against windows/s and
MFLOP/window, int8 rows included where the held-out AUC check offers them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    beats,
    best_seed_rate,
    command_line,
    fmt,
    machine,
    markdown_table,
    mflop_per_window,
    model_metadata,
    now_utc,
    ort_session,
    prepare_models,
    seed_predict_rate,
    time_call,
    update_section,
    window_length,
)
from training.quantize import QuantReport, quantize_checked, quantize_int8

VARIANTS = ("dense", "sparse-l1", "sparse-kl", "contractive", "denoising", "vae", "lstm")


@dataclass(frozen=True)
class Row:
    """One measured configuration."""

    variant: str
    model: str
    opt: str
    threads: int
    batch: int
    ms_per_batch: float
    windows_s: float
    mflop_window: float
    gflop_s: float
    pct_gemm_peak: float
    vs_baseline: float


def lstm_embedding(model: Path) -> int | None:
    """E of the seed-style LSTM autoencoder: half the first LSTM's hidden size."""
    graph = onnx.load(str(model), load_external_data=False).graph
    attrs = [a for n in graph.node if n.op_type == "LSTM" for a in n.attribute]
    sizes = [int(a.i) for a in attrs if a.name == "hidden_size"]
    return sizes[0] // 2 if sizes else None


def gemm_gflops(threads: int, min_time_s: float) -> float:
    """GFLOP/s of one cache-resident ORT fp32 MatMul (256x256 @ 256x256): the practical peak."""
    m, k, n = 256, 256, 256
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, (k, n), np.random.default_rng(0).random((k, n), np.float32)
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (m, k))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (m, n))],
        initializer=[w],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    sess = ort_session(proto.SerializeToString(), threads=threads)
    x = np.random.default_rng(1).random((m, k), np.float32)
    t = time_call(partial(sess.run, None, {"x": x}), min_time_s=min_time_s)
    return 2.0 * m * k * n / t.median_s / 1e9


def measure(
    models: dict[str, Path],
    *,
    mflops: dict[str, float],
    batches: Sequence[int],
    threads: Sequence[int],
    opts: Sequence[str],
    min_time_s: float,
    baseline_rate: float,
) -> list[Row]:
    rows: list[Row] = []
    peak = {n: gemm_gflops(n, min_time_s) for n in threads}
    print(f"  ORT GEMM GFLOP/s by threads: {peak}", file=sys.stderr)
    for variant, path in models.items():
        mflop = mflops[variant]
        for opt in opts:
            for n_threads in threads:
                sess = ort_session(path, threads=n_threads, opt=opt)
                name = sess.get_inputs()[0].name
                length = window_length(sess)
                for batch in batches:
                    x = beats(batch, length, seed=batch)
                    t = time_call(partial(sess.run, None, {name: x}), min_time_s=min_time_s)
                    rate = batch / t.median_s
                    rows.append(
                        Row(
                            variant=variant,
                            model=str(path),
                            opt=opt,
                            threads=n_threads,
                            batch=batch,
                            ms_per_batch=t.median_s * 1e3,
                            windows_s=rate,
                            mflop_window=mflop,
                            gflop_s=rate * mflop / 1e3,
                            pct_gemm_peak=100.0 * rate * mflop / 1e3 / peak[n_threads],
                            vs_baseline=rate / baseline_rate,
                        )
                    )
                    print(
                        f"  {variant:12s} opt={opt:5s} threads={n_threads} batch={batch:4d}: "
                        f"{rate:10.1f} windows/s",
                        file=sys.stderr,
                    )
    return rows


def tables(
    rows: list[Row], baseline_rate: float, baseline_e: int, baseline_n: int, seed_threads: int
) -> str:
    """Summary (best configuration per variant) and the full grid, as Markdown."""
    out: list[str] = []
    best: dict[str, Row] = {}
    for r in rows:
        if r.variant not in best or r.windows_s > best[r.variant].windows_s:
            best[r.variant] = r
    out.append(
        markdown_table(
            [
                "variant",
                "MFLOP/window",
                "best windows/s",
                "at (batch, threads, opt)",
                "GFLOP/s",
                "% of GEMM peak",
                "× seed loop",
            ],
            [
                [
                    r.variant,
                    fmt(r.mflop_window),
                    fmt(r.windows_s),
                    f"{r.batch}, {r.threads}, {r.opt}",
                    fmt(r.gflop_s),
                    f"{r.pct_gemm_peak:.0f} %",
                    fmt(r.vs_baseline),
                ]
                for r in best.values()
            ]
            + [
                [
                    f"seed loop (torch, LSTM E={baseline_e}, 1 window/call)",
                    fmt(mflop_seed(baseline_e)),
                    fmt(baseline_rate),
                    f"1, {seed_threads} (torch), n={baseline_n}",
                    fmt(baseline_rate * mflop_seed(baseline_e) / 1e3),
                    "–",
                    "1",
                ]
            ],
        )
    )
    batches = sorted({r.batch for r in rows})
    grid: dict[tuple[str, str, int], dict[int, Row]] = {}
    for r in rows:
        grid.setdefault((r.variant, r.opt, r.threads), {})[r.batch] = r
    out.append("")
    out.append("windows/s (ms per batch) by batch size:")
    out.append("")
    out.append(
        markdown_table(
            ["variant", "opt", "threads", *[f"batch {b}" for b in batches]],
            [
                [
                    v,
                    o,
                    t,
                    *[
                        f"{fmt(cells[b].windows_s)} ({fmt(cells[b].ms_per_batch)} ms)"
                        if b in cells
                        else "–"
                        for b in batches
                    ],
                ]
                for (v, o, t), cells in grid.items()
            ],
        )
    )
    return "\n".join(out)


@dataclass
class Choice:
    """One model on the Pareto table."""

    model: str
    roc_auc: float
    windows_s: float
    mflop_window: float
    config: str
    offered: bool
    pareto: bool = False


def pareto(
    rows: list[Row], aucs: dict[str, float], quant: dict[str, QuantReport]
) -> tuple[str, list[Choice]]:
    """ROC AUC vs best windows/s per model; a model is on the front unless another is at
    least as good on both and better on one. int8 models count only if offered."""
    best: dict[str, Row] = {}
    for r in rows:
        if r.variant not in best or r.windows_s > best[r.variant].windows_s:
            best[r.variant] = r
    choices: list[Choice] = []
    for name, r in best.items():
        config = f"{r.batch}, {r.threads}, {r.opt}"
        report = quant.get(name.removesuffix(" int8"))
        if name.endswith(" int8") and report is not None:
            auc, offered = report.int8_auc, report.accepted
        elif report is not None:  # fp32, scored on exactly the windows its int8 twin was
            auc, offered = report.fp32_auc, True
        elif name in aucs:
            auc, offered = aucs[name], True
        else:
            continue
        choices.append(Choice(name, auc, r.windows_s, r.mflop_window, config, offered))
    live = [c for c in choices if c.offered]
    for c in live:
        c.pareto = not any(
            o is not c
            and o.roc_auc >= c.roc_auc
            and o.windows_s >= c.windows_s
            and (o.roc_auc, o.windows_s) != (c.roc_auc, c.windows_s)
            for o in live
        )
    choices.sort(key=lambda c: -c.windows_s)
    table = markdown_table(
        ["model", "ROC AUC", "best windows/s", "at (batch, threads, opt)", "MFLOP/window", "front"],
        [
            [
                c.model,
                f"{c.roc_auc:.4f}",
                fmt(c.windows_s),
                c.config,
                fmt(c.mflop_window),
                "yes" if c.pareto else ("" if c.offered else "not offered (AUC drop)"),
            ]
            for c in choices
        ],
    )
    return table, choices


def peaks(rows: list[Row]) -> dict[int, float]:
    """GEMM GFLOP/s per thread count, recovered from the rows' percentages."""
    return {r.threads: r.gflop_s * 100.0 / r.pct_gemm_peak for r in rows if r.pct_gemm_peak}


def mflop_seed(e: int, length: int = 140) -> float:
    """MFLOP per window of the seed's LSTM autoencoder with embedding E."""
    macs = 4 * 2 * e * (1 + 2 * e) + 4 * e * (3 * e) + 4 * e * (2 * e) + 4 * 2 * e * (3 * e)
    return 2.0 * length * (macs + 2 * e) / 1e6


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", type=Path, help="exported .onnx files (skip training)")
    p.add_argument("--compare", type=Path, help="compare.json of `ecg-train compare`: its models")
    p.add_argument("--variants", default="all", help="comma list or 'all' (when training)")
    p.add_argument("--data", default="synthetic:500", help="data spec for the brief training")
    p.add_argument("--epochs", type=int, default=1, help="epochs (weights do not change speed)")
    p.add_argument("--batches", type=parse_ints, default=[1, 8, 64, 256])
    p.add_argument("--threads", type=parse_ints, default=[1, 2])
    p.add_argument("--opts", default="basic,all", help="ORT graph optimisation levels")
    p.add_argument("--min-time", type=float, default=0.4, help="seconds timed per config")
    p.add_argument("--baseline-windows", type=int, default=150)
    p.add_argument("--int8", action="store_true", help="also time each model's int8 version")
    p.add_argument("--torch-threads", type=int, help="torch threads (default: torch's own)")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    p.add_argument("--json", type=Path, help="write rows and metadata as JSON")
    p.add_argument("--benchmarks", type=Path, help="update this file's throughput section")
    p.add_argument("--workdir", type=Path, help="keep trained runs and .onnx files here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    opts = [o for o in args.opts.split(",") if o]
    variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    if args.quick:
        args.batches, args.threads, opts = [1, 64], [1], ["all"]
        args.min_time, args.baseline_windows, args.epochs = 0.05, 10, 1
        if args.variants == "all":
            variants = ["dense", "lstm"]
        args.data = "synthetic:300"
    aucs: dict[str, float] = {}
    quant: dict[str, QuantReport] = {}
    compare_data = None
    with tempfile.TemporaryDirectory(prefix="ecg-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        if args.compare:
            report = json.loads(args.compare.read_text())
            compare_data = str(report["data"])
            usable = [r for r in report["variants"] if Path(str(r.get("onnx"))).is_file()]
            for r in report["variants"]:
                if r not in usable:
                    print(f"  {r['variant']}: no exported model, skipped", file=sys.stderr)
            models: dict[str, Path] = {r["variant"]: Path(r["onnx"]) for r in usable}
            aucs = {r["variant"]: float(r["roc_auc"]) for r in usable}
        elif args.models:
            models = {}
            for path in args.models:
                meta = model_metadata(ort_session(path, threads=1))
                name = meta.get("ecg.variant", path.stem)
                models[name if name not in models else path.stem] = path
        else:
            print(f"training {', '.join(variants)} briefly on {args.data} ...", file=sys.stderr)
            models = prepare_models(
                variants,
                workdir,
                data_spec=args.data,
                epochs=args.epochs,
                latent_dims={"lstm": 16} if args.quick else None,
            )
        mflops = {name: mflop_per_window(path) for name, path in models.items()}
        if args.int8:  # same multiply-adds, done in int8: count them as the fp32 model's
            for name, path in list(models.items()):
                out = workdir / f"{name}.int8.onnx"
                if compare_data is not None:  # the held-out AUC check decides "offered"
                    quant[name] = quantize_checked(path, compare_data, out, timing_s=0.2)
                    print(f"  {name}: {quant[name].summary()}", file=sys.stderr)
                if not out.is_file():  # not offered (or no check): still time it
                    quantize_int8(path, out)
                models[f"{name} int8"] = out
                mflops[f"{name} int8"] = mflops[name]
        lstm = [lstm_embedding(p) for p in models.values()]
        base_e = next((e for e in lstm if e), 128)
        print(f"baseline: seed loop, LSTM E={base_e} ...", file=sys.stderr)
        windows = beats(args.baseline_windows)
        seed_thread_counts = (1,) if args.quick else (1, torch.get_num_threads())
        baseline, seed_threads = best_seed_rate(
            lambda _n: seed_predict_rate(windows, base_e),
            seed_thread_counts,
        )
        rows = measure(
            models,
            mflops=mflops,
            batches=args.batches,
            threads=args.threads,
            opts=opts,
            min_time_s=args.min_time,
            baseline_rate=baseline,
        )
    text = tables(rows, baseline, base_e, args.baseline_windows, seed_threads)
    header = (
        f"Model-only throughput, ONNX Runtime CPU ({now_utc()}).\n"
        f"Machine: {machine()}.\n"
        f"Baseline: the seed's predict loop (torch, one window per call, LSTM E={base_e}), "
        f"{args.baseline_windows} windows, best of torch threads {seed_thread_counts} "
        f"({seed_threads} won).\n"
        f"Command: `{command_line()}`\n"
        f"GEMM peak: one ORT fp32 MatMul 256x256x256 at the same thread count, same run: "
        f"{', '.join(f'{fmt(v)} GFLOP/s ({k} threads)' for k, v in peaks(rows).items())}; "
        "int8 rows count the same multiply-adds against that fp32 peak, so they can pass 100 %.\n"
        "Each cell: median of repeated runs after warm-up; 'best' is the fastest cell.\n"
    )
    print(header)
    print(text)
    front: list[Choice] = []
    if args.compare:
        front_table, front = pareto(rows, aucs, quant)
        front_text = (
            f"Pareto table ({now_utc()}): ROC AUC on the held-out test split of "
            f"`{compare_data}` (from `{args.compare}`) against the best windows/s above. "
            "int8 rows: dynamic quantisation, offered only if the AUC drop is <= 0.002.\n"
            f"Command: `{command_line()}`\n\n" + front_table
        )
        print()
        print(front_text)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "date": now_utc(),
                    "command": command_line(),
                    "baseline": {
                        "what": "seed predict loop, torch, one window per call",
                        "embedding": base_e,
                        "windows": args.baseline_windows,
                        "windows_s": baseline,
                        "torch_threads": seed_threads,
                    },
                    "rows": [asdict(r) for r in rows],
                    "pareto": [asdict(c) for c in front],
                    "quantization": {k: asdict(v) for k, v in quant.items()},
                },
                indent=2,
            )
        )
    if args.benchmarks:
        update_section(args.benchmarks, "throughput", header + "\n" + text)
        if args.compare:
            update_section(args.benchmarks, "pareto", front_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
