"""R-peak detection side by side on MIT-BIH records: our causal streaming detector against
wfdb's XQRS and neurokit2's detectors (offline), EC57-style matching at 150 ms and 50 ms,
CPU time per hour of signal. Needs the `bench` extra (wfdb, neurokit2).

    python bench/qrs.py --data ../shared/data/mitdb --records DS1 [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import neurokit2 as nk  # the bench extra; imported before any timing
import numpy as np
from wfdb import processing

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.sections import update_section  # noqa: E402
from monitor.frontend.qrs import detect_r_peaks  # noqa: E402
from training.qrs import parse_records, run_record, summary  # noqa: E402


def _xqrs(x: np.ndarray, fs: float) -> np.ndarray:
    return np.asarray(processing.xqrs_detect(sig=x, fs=fs, verbose=False))


def _nk(method: str) -> Callable[[np.ndarray, float], np.ndarray]:
    def run(x: np.ndarray, fs: float) -> np.ndarray:
        clean_method = "neurokit" if method == "neurokit" else method
        cleaned = nk.ecg_clean(x, sampling_rate=int(fs), method=clean_method)
        _, info = nk.ecg_peaks(cleaned, sampling_rate=int(fs), method=method)
        return np.asarray(info["ECG_R_Peaks"], dtype=np.int64)

    return run


DETECTORS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "ours (causal, streaming)": detect_r_peaks,
    "wfdb XQRS": _xqrs,
    "neurokit2 default": _nk("neurokit"),
    "neurokit2 pantompkins1985": _nk("pantompkins1985"),
    "neurokit2 hamilton2002": _nk("hamilton2002"),
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mitdb")
    p.add_argument("--records", default="DS1")
    p.add_argument("--only", nargs="*", help="detector names (substring match)")
    p.add_argument("--write", type=Path, help="update the qrs section of this BENCHMARKS.md")
    args = p.parse_args(argv)
    records = parse_records(args.records, args.data)
    names = [n for n in DETECTORS if not args.only or any(o in n for o in args.only)]
    warnings.simplefilter("ignore")

    lines = [
        f"R-peak detection on MIT-BIH {args.records} ({len(records)} records, lead MLII), "
        "EC57-style one-to-one matching; reference = all beat annotations. "
        "`+P (VF excl.)` leaves out detections inside ventricular flutter episodes "
        "(`[`...`]`, record 207), as EC57/bxb do. CPU s per hour of signal, one core.",
        "",
        "| detector | Se 150 ms | +P 150 ms | +P 150 (VF excl.) | Se 50 ms | +P 50 ms "
        "| +P 50 (VF excl.) | median error ms | median abs error ms | CPU s / h |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    per_record: dict[str, list[str]] = {}
    for name in names:
        results = [run_record(args.data, r, DETECTORS[name]) for r in records]
        s = summary(results)

        def pct(key: str, s: dict[str, object] = s) -> str:
            return f"{100 * float(s[key]):.2f}"  # type: ignore[arg-type]

        lines.append(
            f"| {name} | {pct('se_150ms')} | {pct('ppv_150ms')} | {pct('ppv_150ms_vf_excluded')} "
            f"| {pct('se_50ms')} | {pct('ppv_50ms')} | {pct('ppv_50ms_vf_excluded')} "
            f"| {s['median_error_ms']:+.1f} | {s['median_abs_error_ms']:.1f} "
            f"| {s['cpu_s_per_hour']:.2f} |"
        )
        print(lines[-1], flush=True)
        for r in results:
            per_record.setdefault(r.record, []).append(
                f"{r.n_ref - r.tp[150]}/{r.n_det - r.tp[150]}"
            )
    lines += [
        "",
        "Per record, missed / false detections at 150 ms (columns as above):",
        "",
        "| record | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    lines += [f"| {rec} | " + " | ".join(v) + " |" for rec, v in per_record.items()]
    lines += ["", f"Command: `python bench/qrs.py --records {args.records} --write BENCHMARKS.md`"]
    body = "\n".join(lines)
    print(body)
    if args.write:
        update_section(args.write, "qrs", "## QRS detection (front end)\n\n" + body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
