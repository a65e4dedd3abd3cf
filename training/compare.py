"""Train, evaluate, export and time several autoencoder variants on one data spec.

Writes REPORT_DIR/compare.md (one Markdown table), REPORT_DIR/compare.json and a run
directory per variant (REPORT_DIR/<variant>/, with its model.onnx).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from training.data import Dataset, load_dataset
from training.detector import Detector
from training.errors import TrainingError
from training.export import export_run
from training.models import MODELS
from training.train import FitConfig, default_threads, fit

THROUGHPUT_BATCH = 64
COUNTED_OPS = ("MatMul", "Gemm", "LSTM", "GRU", "Conv")


@dataclass(frozen=True)
class OpCount:
    """Floating-point operations of one counted node, per window (2 per multiply-add)."""

    name: str
    op_type: str
    flops: int


def _node_flops(op_type: str, node: Any, shapes: dict[str, tuple[int, ...]]) -> int:
    """FLOPs (2 x multiply-adds) of one MatMul/Gemm/LSTM/GRU/Conv with batch 1."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if op_type == "MatMul":
        a, b = shapes[node.input[0]], shapes[node.input[1]]
        out = shapes[node.output[0]]
        k = a[-1]
        n = b[-1] if len(b) > 1 else 1
        rows = int(np.prod(out)) // max(n, 1)
        return 2 * rows * k * n
    if op_type == "Gemm":
        a, b = shapes[node.input[0]], shapes[node.input[1]]
        m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
        n = b[0] if attrs.get("transB", 0) else b[1]
        return 2 * m * k * n
    if op_type in ("LSTM", "GRU"):
        x = shapes[node.input[0]]
        w = shapes[node.input[1]]  # [directions, gates * hidden, input]
        layout = int(attrs.get("layout", 0))
        steps = x[1] if layout else x[0]
        hidden = int(attrs["hidden_size"])
        directions, gates_hidden, input_size = w
        per_step = 2 * gates_hidden * (input_size + hidden)
        return int(steps * directions * per_step)
    if op_type == "Conv":
        w = shapes[node.input[1]]  # [out_ch, in_ch / groups, *kernel]
        out = shapes[node.output[0]]  # [1, out_ch, *spatial]
        return 2 * int(np.prod(out)) * int(np.prod(w[1:]))
    return 0


def onnx_flops(model_path: Path, window_length: int) -> tuple[int, list[OpCount]]:
    """FLOPs per window of an ONNX model, counted from its MatMul/Gemm/LSTM/GRU/Conv nodes.

    Shapes come from running the graph once on one window, so dynamic reshapes resolve;
    element-wise ops (activations, biases, gates) are not counted.
    """
    model = onnx.load(str(model_path))
    graph = model.graph
    nodes = [n for n in graph.node if n.op_type in COUNTED_OPS]
    if any(n.op_type in ("Loop", "Scan", "If") for n in graph.node):
        raise TrainingError(f"{model_path}: control-flow nodes are not counted")
    wanted: list[str] = []
    initial = {i.name: tuple(int(d) for d in i.dims) for i in graph.initializer}
    existing = {o.name for o in graph.output}
    for node in nodes:
        for name in [*node.input, *node.output]:
            if name and name not in initial and name not in existing and name not in wanted:
                wanted.append(name)
    for name in wanted:
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {feed_name: np.zeros((1, window_length), dtype=np.float32)})
    shapes = dict(initial)
    shapes.update(
        {n: tuple(int(d) for d in np.shape(v)) for n, v in zip(names, values, strict=True)}
    )
    counts = [OpCount(n.name, n.op_type, _node_flops(n.op_type, n, shapes)) for n in nodes]
    return sum(c.flops for c in counts), counts


def torch_flops(model: torch.nn.Module, window_length: int) -> int:
    """FLOPs per window counted from the torch modules (Linear, LSTM) while scoring one window.

    The same convention as `onnx_flops`: 2 per multiply-add of the weight matrices only.
    """
    total = 0

    def on_linear(module: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal total
        assert isinstance(module, torch.nn.Linear)
        rows = inputs[0].numel() // module.in_features
        total += 2 * rows * module.in_features * module.out_features

    def on_lstm(module: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal total
        assert isinstance(module, torch.nn.LSTM)
        x = inputs[0]
        steps = x.shape[1] if module.batch_first else x.shape[0]
        directions = 2 if module.bidirectional else 1
        hidden = module.hidden_size
        for layer in range(module.num_layers):
            size_in = module.input_size if layer == 0 else hidden * directions
            total += steps * directions * 2 * 4 * hidden * (size_in + hidden)

    handles = []
    for sub in model.modules():
        if isinstance(sub, torch.nn.Linear):
            handles.append(sub.register_forward_hook(on_linear))
        elif isinstance(sub, torch.nn.LSTM):
            handles.append(sub.register_forward_hook(on_lstm))
    try:
        with torch.no_grad():
            model.eval()
            model(torch.zeros(1, window_length))
    finally:
        for handle in handles:
            handle.remove()
    return total


def ort_throughput(
    model_path: Path,
    windows: np.ndarray,
    *,
    batch: int = THROUGHPUT_BATCH,
    seconds: float = 1.0,
    threads: int = 0,
) -> float:
    """ONNX Runtime CPU windows/s at a fixed batch: a warm-up, then a short timed loop."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    reps = -(-batch // windows.shape[0])
    feed = {name: np.ascontiguousarray(np.tile(windows, (reps, 1))[:batch], dtype=np.float32)}
    for _ in range(3):
        session.run(None, feed)
    runs = 0
    started = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds or runs < 5:
        session.run(None, feed)
        runs += 1
        elapsed = time.perf_counter() - started
    return runs * batch / elapsed


def parse_variants(text: str, known: list[str]) -> list[str]:
    if text.strip() == "all":
        return list(known)
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise TrainingError(f"--variants: unknown {unknown or text!r}; choose from {known} or all")
    return list(dict.fromkeys(names))


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("variant", "variant", 0),
    ("roc_auc", "ROC AUC", 4),
    ("pr_auc", "PR AUC", 4),
    ("recall", "recall @thr", 3),
    ("false_alarm_rate", "false alarms @thr", 3),
    ("recall_at_0.1pct_fpr", "recall @0.1% FA", 3),
    ("recall_at_1pct_fpr", "recall @1% FA", 3),
    ("recall_at_5pct_fpr", "recall @5% FA", 3),
    ("cv_roc_auc", "CV ROC AUC", 4),
    ("cv_recall_at_0.001", "CV recall @0.1% FA", 3),
    ("cv_recall_at_0.01", "CV recall @1% FA", 3),
    ("cv_recall_at_0.05", "CV recall @5% FA", 3),
    ("cv_fa", "CV FA held-out normals (target)", 0),
    ("threshold", "threshold", 2),
    ("parameters", "params", 0),
    ("mflop_per_window", "MFLOP/window", 3),
    ("ort_cpu_windows_per_s", "ORT CPU windows/s", 0),
    ("epochs_run", "epochs", 0),
    ("fit_s", "train s", 1),
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|"
    lines = [header, rule]
    for row in rows:
        cells = []
        for key, _, digits in COLUMNS:
            value = row.get(key)
            if key == "ort_cpu_windows_per_s" and isinstance(value, float):
                cells.append(f"{value:,.0f}")
            elif key == "cv_fa" and isinstance(value, dict):
                cells.append(
                    f"{100 * value['fa']:.2f} ± {100 * value['se']:.2f} % "
                    f"({100 * value['target']:g} %)"
                )
            else:
                cells.append(_fmt(value, digits))
        lines.append("| " + " | ".join(cells) + " |")
    failures = [f"- {row['variant']}: {row['error']}" for row in rows if "error" in row]
    if failures:
        lines += ["", "Failed:", *failures]
    return "\n".join(lines) + "\n"


def compare_variant(
    variant: str,
    dataset: Dataset,
    out: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Fit one variant (which evaluates it on the held-out test), export it, measure its cost.

    A variant that fails (export parity, say) keeps what it measured and an `error`, so one
    failure does not cost the other variants' results.
    """
    row: dict[str, Any] = {"variant": variant}
    try:
        cfg = FitConfig.for_variant(
            variant,
            **{k: getattr(args, k) for k in ("epochs", "batch_size", "latent_dim", "lr", "fpr")},
            device=args.device,
            seed=args.seed,
        )
        run_dir = fit(cfg, dataset, out / variant, progress=not args.quiet)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        record = json.loads((run_dir / "config.json").read_text())
        model = Detector.load(run_dir).model
        row.update(
            {
                "mflop_torch_modules": torch_flops(model, dataset.window_length) / 1e6,
                "roc_auc": float(metrics["roc_auc"]),
                "pr_auc": float(metrics["pr_auc"]),
                "recall": float(metrics["recall"]),
                "false_alarm_rate": float(metrics["false_alarm_rate"]),
                "recall_at_1pct_fpr": metrics.get("recall_at_1pct_fpr"),
                "recall_at_0.1pct_fpr": metrics.get("recall_at_0.1pct_fpr"),
                "recall_at_5pct_fpr": metrics.get("recall_at_5pct_fpr"),
                "threshold": float(metrics["threshold"]),
                "parameters": int(record["parameters"]),
                "epochs_run": int(record["epochs_run"]),
                "fit_s": float(record["train_seconds"]),
                "config": record["config"],
                "run_dir": str(run_dir),
                "per_class": metrics.get("per_class"),
            }
        )
        onnx_path = export_run(run_dir, run_dir / "model.onnx")
        flops, _ = onnx_flops(onnx_path, dataset.window_length)
        row["mflop_per_window"] = flops / 1e6
        row["ort_cpu_windows_per_s"] = ort_throughput(
            onnx_path,
            dataset.test_x[:THROUGHPUT_BATCH],
            seconds=args.timing_seconds,
            threads=args.ort_threads,
        )
        row["onnx"] = str(onnx_path)
        if args.cv_repeats > 0:
            row.update(cross_validate(cfg, dataset, args))
    except TrainingError as exc:
        row["error"] = str(exc)
    if "mflop_per_window" not in row and "mflop_torch_modules" in row:
        row["mflop_per_window"] = row["mflop_torch_modules"]  # no ONNX file to count
    return row


def cross_validate(cfg: FitConfig, dataset: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Repeated nested CV of the recipe (training.cv) on every normal and anomalous window of
    the spec; the row gets its pooled numbers for the deployment `ecg-train fit` makes."""
    from training.cv import nested_cv  # noqa: PLC0415
    from training.train import recipe_of  # noqa: PLC0415

    anomalous = dataset.test_is_anomaly
    normals = np.concatenate([dataset.train, dataset.val, dataset.test_x[~anomalous]])
    result = nested_cv(
        recipe_of(cfg, zscore=dataset.preprocess == "zscore"),
        normals,
        dataset.test_x[anomalous],
        repeats=args.cv_repeats,
        outer_k=args.cv_folds,
        inner_k=cfg.folds,
        fpr=cfg.fpr,
        seed=cfg.seed,
    )
    r = result["results"][f"{cfg.score}/{'ensemble' if cfg.deploys_ensemble else 'refit'}"]
    return {
        "cv_roc_auc": r["roc_auc_pooled"],
        "cv_recall_at_0.001": r["recall_at_0.001"],
        "cv_recall_at_0.01": r["recall_at_0.01"],
        "cv_recall_at_0.05": r["recall_at_0.05"],
        "cv_fa": {"fa": r["fa_at_threshold"], "se": r["fa_se"], "target": cfg.fpr},
        "cv": result,
    }


def _progress_line(row: dict[str, Any]) -> str:
    if "error" in row and "roc_auc" not in row:
        return f"{row['variant']}: FAILED: {row['error']}"
    line = (
        f"{row['variant']}: ROC AUC {row['roc_auc']:.4f}, recall {row['recall']:.3f} "
        f"at false alarms {row['false_alarm_rate']:.3f}"
    )
    if "ort_cpu_windows_per_s" in row:
        line += f", {row['ort_cpu_windows_per_s']:,.0f} windows/s"
    return line + (f"; FAILED: {row['error']}" if "error" in row else "")


def run_compare(args: argparse.Namespace) -> dict[str, Any]:
    variants = parse_variants(args.variants, list(MODELS))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, args.threads))
    dataset = load_dataset(args.data, protocol=args.protocol, seed=args.seed)
    started = time.perf_counter()
    rows = []
    for i, variant in enumerate(variants, 1):
        print(f"[compare {i}/{len(variants)}] {variant}", file=sys.stderr)
        row = compare_variant(variant, dataset, out, args)
        print(f"[compare {i}/{len(variants)}] {_progress_line(row)}", file=sys.stderr)
        rows.append(row)
    report = {
        "data": args.data,
        "dataset": {
            "name": dataset.name,
            "sha256": dataset.sha256,
            "protocol": dataset.protocol,
            "seed": dataset.seed,
            "train": int(dataset.train.shape[0]),
            "val": int(dataset.val.shape[0]),
            "test": int(dataset.test_x.shape[0]),
            "test_anomalies": int(dataset.test_is_anomaly.sum()),
            "window_length": dataset.window_length,
        },
        "throughput": {
            "batch": THROUGHPUT_BATCH,
            "provider": "CPUExecutionProvider",
            "intra_op_threads": args.ort_threads or "onnxruntime default",
            "cpus": os.cpu_count(),
        },
        "mflop": "2 x multiply-adds of the MatMul/Gemm/LSTM weights per window, counted on the "
        "ONNX graph (the torch modules where export failed); element-wise ops not counted",
        "host": platform.platform(),
        "wall_s": round(time.perf_counter() - started, 1),
        "variants": rows,
    }
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    ds = report["dataset"]
    (out / "compare.md").write_text(
        f"# Variant comparison on `{args.data}`\n\n"
        f"Protocol {ds['protocol']}, seed {ds['seed']}: {ds['train']} normal train, "
        f"{ds['val']} normal validation, {ds['test']} test windows "
        f"({ds['test_anomalies']} anomalous). Threshold: each variant's calibration "
        f"(default cross-conformal). CV columns (with --cv-repeats): repeated nested "
        f"cross-validation, FA measured on normals held out from training and calibration. "
        f"Throughput: ONNX Runtime CPU, batch {THROUGHPUT_BATCH}, "
        f"{args.ort_threads or 'default'} intra-op threads on {os.cpu_count()} CPUs. "
        f"MFLOP: 2 x multiply-adds of the MatMul/Gemm/LSTM weights per window.\n\n"
        + markdown_table(rows)
    )
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data spec: ucr:PATH or synthetic[:N]")
    parser.add_argument(
        "--variants", default="all", help="all, or variant names separated by commas"
    )
    parser.add_argument("--out", required=True, type=Path, help="report folder")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override each variant's epochs (default: each variant's recipe, as for fit)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="override each variant's batch size"
    )
    parser.add_argument(
        "--latent-dim", type=int, default=None, help="override each variant's code size"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="override each variant's learning rate"
    )
    parser.add_argument(
        "--fpr",
        type=float,
        default=None,
        help="share of normal beats allowed to alarm (default: the recipes', 0.01)",
    )
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to train"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the split and the training")
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--timing-seconds",
        type=float,
        default=2.0,
        help="seconds of each ONNX Runtime throughput measurement",
    )
    parser.add_argument(
        "--ort-threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads, 0 = ONNX Runtime's choice",
    )
    parser.add_argument(
        "--protocol",
        default="auto",
        choices=("auto", "seed", "ucr"),
        help="how to split the data, as for fit",
    )
    parser.add_argument(
        "--cv-repeats",
        type=int,
        default=0,
        help="also run repeated nested CV (R x --cv-folds outer folds) per variant: the CV columns",
    )
    parser.add_argument("--cv-folds", type=int, default=5, help="outer folds of the CV")


def main(args: argparse.Namespace) -> int:
    report = run_compare(args)
    failed = [row["variant"] for row in report["variants"] if "error" in row]
    print(json.dumps({"out": str(args.out), "wall_s": report["wall_s"], "failed": failed}))
    return 1 if failed else 0
