"""Leave-records-out cross-validation of stream-model recipes on MIT-BIH (the lever table
of BENCHMARKS.md, "MIT-BIH inter-patient"). Beats are found and cut by the front end once
per segmentation; every recipe is then judged by the same folds as `ecg-train fit`.

    python bench/mitdb_cv.py --data ../shared/data/mitdb --records DS1 \
        --segmentation '{}' --recipes '{"lam05": {"lam": 0.5}, "lam0": {"lam": 0.0}}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from training import beat_eval  # noqa: E402
from training.mitdb import load_beat_data  # noqa: E402
from training.stream_model import StreamFitConfig, cross_validate  # noqa: E402
from training.stream_train import read_segmentation, summary_row  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="the mitdb directory")
    p.add_argument("--records", default="DS1")
    p.add_argument("--segmentation", default="{}", help="JSON overrides of the default")
    p.add_argument("--recipes", required=True, help="JSON {tag: StreamFitConfig overrides}")
    args = p.parse_args()
    torch.set_num_threads(1)
    seg = read_segmentation(args.segmentation)
    t = time.monotonic()
    data = load_beat_data(f"mitdb:{args.data}", seg, records=args.records)
    print(f"loaded {len(data.records)} records in {time.monotonic() - t:.0f} s", flush=True)
    for tag, over in json.loads(args.recipes).items():
        cfg = replace(StreamFitConfig(), **over)
        t = time.monotonic()
        cv = cross_validate(cfg, list(data.records), seg)
        m = beat_eval.beat_metrics(list(data.records), cv.scores, cv.thresholds, cfg.fpr)
        row = {k: round(v, 4) for k, v in summary_row(m).items() if v is not None}
        print(tag, args.segmentation, json.dumps(over), json.dumps(row), flush=True)
        print(f"  ({time.monotonic() - t:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
