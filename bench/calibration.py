"""Threshold calibration, measured.

Repeated nested cross-validation of the default recipes (training.cv: outer folds hold normals
out of everything; cross-conformal calibration inside), one JSON per run, then the table:

    python bench/calibration.py cv --data ucr:/work/shared/data/ECG5000/ECG5000_TRAIN.arff \
        --variants dense,vae --repeats 5 --json runs/cv-dense-vae.json
    python bench/calibration.py report runs/cv-*.json --benchmarks BENCHMARKS.md

and the older side-by-side of the validation-split methods on trained runs (anomalies missed
and false alarms on each run's held-out test split):

    python bench/calibration.py RUN_DIR [RUN_DIR ...]   # e.g. `ecg-train compare`'s run dirs

Each run is re-scored with its own data spec, protocol and split seed (from config.json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from training.calibrate import calibrate  # noqa: E402
from training.data import load_dataset  # noqa: E402
from training.detector import Detector  # noqa: E402

METHODS = ("quantile", "lognormal", "auto")
SECTION = "calibration-cv"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cv"]:
        return cv_main(argv[1:])
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    return runs_main(argv)


def cv_main(argv: Sequence[str]) -> int:
    import torch  # noqa: PLC0415

    from bench.common import command_line, machine, now_utc  # noqa: PLC0415
    from training.cv import nested_cv  # noqa: PLC0415
    from training.multifit import Recipe  # noqa: PLC0415
    from training.train import FitConfig  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="bench/calibration.py cv")
    p.add_argument("--data", required=True, help="ucr:PATH of a file with normals and anomalies")
    p.add_argument("--variants", default="dense")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--outer", type=int, default=5)
    p.add_argument("--inner", type=int, default=5)
    p.add_argument("--fpr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field for this run (e.g. epochs=40); says so in the JSON",
    )
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    kind, _, target = args.data.partition(":")
    if kind != "ucr":
        raise SystemExit("cv needs ucr:PATH")
    from monitor.beats import NORMAL_CLASS, read_ucr  # noqa: PLC0415

    x, y = read_ucr(Path(target))
    normals, anomalies = x[y == NORMAL_CLASS], x[y != NORMAL_CLASS]
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    runs = []
    for variant in args.variants.split(","):
        cfg = FitConfig.for_variant(variant)
        recipe = Recipe(
            variant=variant,
            latent_dim=cfg.latent_dim,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            patience=cfg.patience,
            options=dict(cfg.options),
            schedule=cfg.schedule,
            grad_clip=cfg.grad_clip,
        )
        for key, value in overrides.items():
            setattr(recipe, key, value)
        out = nested_cv(
            recipe,
            normals,
            anomalies,
            repeats=args.repeats,
            outer_k=args.outer,
            inner_k=args.inner,
            fpr=args.fpr,
            seed=args.seed,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
        out["overrides"] = overrides
        out["data"] = args.data
        out["machine"] = machine()
        out["when"] = now_utc()
        out["command"] = command_line()
        runs.append(out)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
    return 0


def _pct(v: float | None, digits: int = 1) -> str:
    return "—" if v is None or math.isnan(v) else f"{100 * v:.{digits}f}"


def _calibration_n(proto: dict[str, Any]) -> float:
    """The typical calibration size n of an outer fold: the normals it does not hold out."""
    return float(proto["normals"] * (proto["outer_k"] - 1) / proto["outer_k"])


def _bound_lower(proto: dict[str, Any]) -> float:
    """α − 1/(n + 1) for the typical calibration size n of an outer fold."""
    return float(max(0.0, float(proto["fpr"]) - 1.0 / (_calibration_n(proto) + 1.0)))


def _spread(values: list[float | None] | None) -> str:
    """(min–max over repeats) when there are several."""
    vals = [v for v in values or [] if v is not None]
    if len(vals) < 2:
        return ""
    return f" ({_pct(min(vals), 0)}–{_pct(max(vals), 0)})"


def _one_calibration(proto: dict[str, Any]) -> str:
    """The 5-95 % range of one calibration's false-alarm rate (Beta law) at that n."""
    from training.calibrate import conformal_bound  # noqa: PLC0415

    law = conformal_bound(round(_calibration_n(proto)), float(proto["fpr"]))
    law = law["fa_given_calibration"]
    return f"{_pct(law['q05'], 2)}–{_pct(law['q95'], 2)} %"


def report_table(runs: list[dict[str, Any]], keys: Sequence[str]) -> str:
    lines = [
        "| variant | score / deployment | repeats × outer folds | ROC AUC | recall @0.1 % FA "
        "| @1 % FA (per repeat) | @5 % FA | FA at the 1 % threshold ± s.e. | recall there "
        "| split-conformal bound on FA | one calibration's FA, 90 % of draws |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for run in runs:
        proto, res, over = run["protocol"], run["results"], run.get("overrides") or {}
        name = str(run["variant"])
        if over:
            name += " (" + ", ".join(f"{k}={v}" for k, v in over.items()) + ")"
        for key in keys:
            r = res.get(key)
            if r is None:
                continue
            lines.append(
                f"| {name} | {key} | {r.get('repeats', proto['repeats'])} × {proto['outer_k']} "
                f"| {r['roc_auc_pooled']:.4f} | {_pct(r['recall_at_0.001'])} "
                f"| {_pct(r['recall_at_0.01'])}{_spread(r.get('recall_at_0.01_by_repeat'))} "
                f"| {_pct(r['recall_at_0.05'])} "
                f"| {_pct(r['fa_at_threshold'], 2)} ± {_pct(r['fa_se'], 2)} % "
                f"| {_pct(r['recall_at_threshold'])} "
                f"| [{_pct(_bound_lower(proto), 2)}, {_pct(r['bound_fa_upper'], 2)}] % "
                f"| {_one_calibration(proto)} |"
            )
    return "\n".join(lines) + "\n"


def pool_seeds(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of one recipe and protocol that differ only in seed (side by side on several
    cores) become one run whose repeats add up; the order of first appearance is kept."""
    from training.cv import merge_runs  # noqa: PLC0415

    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        proto = {k: v for k, v in run["protocol"].items() if k not in ("seed", "repeats")}
        key = json.dumps(
            [run["variant"], run.get("recipe"), run.get("overrides"), proto, run.get("data")],
            sort_keys=True,
        )
        groups.setdefault(key, []).append(run)
    return [g[0] if len(g) == 1 or "raw" not in g[0] else merge_runs(g) for g in groups.values()]


def report_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/calibration.py report")
    p.add_argument("json", nargs="+", type=Path)
    p.add_argument("--benchmarks", type=Path, help="write the section into this BENCHMARKS.md")
    p.add_argument("--keys", default="l1/refit,std/refit,std/ensemble,std/cv+")
    args = p.parse_args(argv)
    runs = pool_seeds([run for path in args.json for run in json.loads(path.read_text())])
    table = report_table(runs, args.keys.split(","))
    print(table)
    if args.benchmarks is not None:
        from bench.sections import update_section  # noqa: PLC0415

        update_section(args.benchmarks, SECTION, table)
    return 0


def runs_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories written by ecg-train fit")
    p.add_argument("--fpr", type=float, default=0.01)
    args = p.parse_args(argv)
    totals = {m: [0, 0] for m in METHODS}  # missed, false alarms
    n_anom = n_norm = 0
    print(
        "| run | seed | "
        + " | ".join(f"{m}: threshold, missed, false alarms" for m in METHODS)
        + " |"
    )
    print("|---|---:|" + "---|" * len(METHODS))
    for run in args.runs:
        info = json.loads((run / "config.json").read_text())
        data = info["data"]
        seed = int(info["config"]["seed"])
        ds = load_dataset(data["spec"], protocol=data.get("protocol", "auto"), seed=seed)
        detector = Detector.load(run)
        val = detector.score(ds.val)
        test = detector.score(ds.test_x)
        anomalous = ds.test_is_anomaly
        n_anom += int(anomalous.sum())
        n_norm += int((~anomalous).sum())
        cells = []
        for m in METHODS:
            t = calibrate(val, args.fpr, method=m).threshold
            missed = int((test[anomalous] <= t).sum())
            false_alarms = int((test[~anomalous] > t).sum())
            totals[m][0] += missed
            totals[m][1] += false_alarms
            cells.append(f"{t:.1f}, {missed}, {false_alarms}")
        print(f"| {run.parent.name}/{run.name} | {seed} | " + " | ".join(cells) + " |")
    print()
    print(f"| method | anomalies missed (of {n_anom}) | false alarms (of {n_norm} normals) |")
    print("|---|---:|---:|")
    for m in METHODS:
        missed, fa = totals[m]
        print(
            f"| {m} | {missed} ({missed / max(n_anom, 1):.2%}) | {fa} ({fa / max(n_norm, 1):.1%}) |"
        )
    return 0 if np.isfinite(list(totals.values())).all() else 1


if __name__ == "__main__":
    sys.exit(main())
