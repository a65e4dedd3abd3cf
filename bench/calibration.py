"""Threshold calibration methods side by side on trained runs: anomalies missed and false
alarms on each run's held-out test split, for the empirical quantile and the log-normal fit.

    python bench/calibration.py RUN_DIR [RUN_DIR ...]   # e.g. `ecg-train compare`'s run dirs

Each run is re-scored with its own data spec, protocol and split seed (from config.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from training.calibrate import calibrate  # noqa: E402
from training.data import load_dataset  # noqa: E402
from training.detector import Detector  # noqa: E402

METHODS = ("quantile", "lognormal", "auto")


def main(argv: Sequence[str] | None = None) -> int:
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
