"""Each bench script runs end to end with tiny settings and writes what it promises.

Smoke tests only: timings are printed, never asserted (goals live in BENCHMARKS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.common import mflop_per_window, prepare_models, update_section
from bench.model_throughput import mflop_seed

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *(str(a) for a in args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny LSTM (E=8), fitted one epoch and exported by the training package."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `ecg-train fit` does: small models, shared cores
    try:
        return prepare_models(
            ["lstm"],
            tmp_path_factory.mktemp("bench-models"),
            data_spec="synthetic:200",
            epochs=1,
            latent_dims={"lstm": 8},
        )
    finally:
        torch.set_num_threads(threads)


def test_model_throughput_quick_writes_table_json_and_section(
    models: dict[str, Path], tmp_path: Path
) -> None:
    out, bench_md = tmp_path / "tp.json", tmp_path / "BENCHMARKS.md"
    bench_md.write_text("# Benchmarks\n\nkept text\n")
    proc = _run(
        "bench/model_throughput.py",
        "--quick",
        "--int8",
        "--models",
        models["lstm"],
        "--json",
        out,
        "--benchmarks",
        bench_md,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| variant | MFLOP/window |" in proc.stdout
    result = json.loads(out.read_text())
    assert {r["variant"] for r in result["rows"]} == {"lstm", "lstm int8"}
    baseline = result["baseline"]["windows_s"]
    assert result["baseline"]["embedding"] == 8  # the LSTM under test, not the seed's 128
    for row in result["rows"]:
        assert row["windows_s"] > 0
        assert row["vs_baseline"] == pytest.approx(row["windows_s"] / baseline)
    text = bench_md.read_text()
    assert "kept text" in text and text.count("<!-- throughput:begin -->") == 1


def test_model_throughput_with_a_compare_report_adds_the_pareto_table(
    models: dict[str, Path], tmp_path: Path
) -> None:
    report = tmp_path / "compare.json"
    report.write_text(
        json.dumps(
            {
                "data": "synthetic:200",  # what the fixture's model was trained on
                "variants": [{"variant": "lstm", "onnx": str(models["lstm"]), "roc_auc": 0.5}],
            }
        )
    )
    out, bench_md = tmp_path / "tp.json", tmp_path / "BENCHMARKS.md"
    proc = _run(
        "bench/model_throughput.py", "--quick", "--int8", "--compare", report,
        "--json", out, "--benchmarks", bench_md,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    quant = result["quantization"]["lstm"]
    front = {c["model"]: c for c in result["pareto"]}
    assert set(front) == {"lstm", "lstm int8"}
    assert front["lstm"]["roc_auc"] == quant["fp32_auc"]  # both scored on the same split
    assert front["lstm int8"]["roc_auc"] == quant["int8_auc"]
    assert front["lstm int8"]["offered"] == quant["accepted"]
    assert any(c["pareto"] for c in front.values())
    assert "<!-- pareto:begin -->" in bench_md.read_text()


def test_seed_lstm_flop_formula_matches_the_onnx_count(models: dict[str, Path]) -> None:
    assert mflop_per_window(models["lstm"]) == pytest.approx(mflop_seed(8), rel=1e-3)
    assert mflop_seed(128) == pytest.approx(275.6, abs=0.1)  # the 276 MFLOP


def test_train_time_quick_reports_epochs_and_baseline(tmp_path: Path) -> None:
    out = tmp_path / "tt.json"
    proc = _run("bench/train_time.py", "--quick", "--variants", "dense", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "extrapolated" in proc.stdout
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["variant"] == "dense" and row["epochs_run"] <= row["epochs_cap"] == 2
    assert row["seconds_per_epoch"] > 0 and result["baseline"]["epoch_s_extrapolated"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpu_without_cuda_exits_2_with_a_reason(models: dict[str, Path]) -> None:
    proc = _run("bench/gpu.py", "--model", models["lstm"])
    assert proc.returncode == 2
    assert "no usable CUDA device" in proc.stderr and "--cpu" in proc.stderr


def test_gpu_dry_run_prints_the_plan() -> None:
    proc = _run("bench/gpu.py", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["batches"][-1] == 32768 and "torch_cuda" in plan["environment"]


def test_gpu_cpu_smoke_times_ort_and_trained_torch_model_and_replaces_section(
    models: dict[str, Path], tmp_path: Path
) -> None:
    out, bench_md = tmp_path / "gpu.json", tmp_path / "BENCHMARKS.md"
    bench_md.write_text("<!-- gpu:begin -->\nold\n<!-- gpu:end -->\n")
    run_dir = models["lstm"].parent / "lstm"  # where prepare_models fitted it
    proc = _run(
        "bench/gpu.py", "--cpu", "--quick", "--model", models["lstm"], "--run", run_dir,
        "--batches", "16,32", "--precisions", "fp32,bf16", "--data", "synthetic:300",
        "--json", out, "--benchmarks", bench_md,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"trained weights from {run_dir}" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert {r["precision"] for r in rows} == {"fp32", "bf16"}
    assert any(r["backend"].startswith("onnxruntime") for r in rows)
    fp32 = [r for r in rows if r["backend"].startswith("torch") and r["precision"] == "fp32"]
    assert fp32 and all(r["windows_s"] > 0 and r["max_rel_score_err"] == 0 for r in fp32)
    assert all(0.0 <= r["roc_auc"] <= 1.0 for r in rows if r["roc_auc"] is not None)
    text = bench_md.read_text()
    assert "old" not in text and text.count("<!-- gpu:end -->") == 1


def test_update_section_replaces_between_markers_only(tmp_path: Path) -> None:
    path = tmp_path / "B.md"
    path.write_text("intro\n<!-- x:begin -->\nold\n<!-- x:end -->\noutro\n")
    update_section(path, "x", "new")
    update_section(path, "y", "other")
    assert path.read_text() == (
        "intro\n<!-- x:begin -->\nnew\n<!-- x:end -->\noutro\n\n"
        "<!-- y:begin -->\nother\n<!-- y:end -->\n"
    )


def test_calibration_script_counts_misses_and_false_alarms_per_method(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench/calibration.py re-scores a run on its own split and totals each method."""
    from bench.calibration import main as calibration_main  # noqa: PLC0415
    from training.calibrate import calibrate  # noqa: PLC0415
    from training.data import load_dataset  # noqa: PLC0415
    from training.detector import Detector  # noqa: PLC0415
    from training.train import FitConfig, fit  # noqa: PLC0415

    spec = "synthetic:400"
    dataset = load_dataset(spec, seed=3)
    run = fit(
        FitConfig.for_variant("dense", epochs=3, seed=3),
        dataset,
        tmp_path / "run",
        progress=False,
        plots=False,
    )
    assert calibration_main([str(run)]) == 0
    out = capsys.readouterr().out
    scores = Detector.load(run).score(dataset.test_x)
    anomalous = dataset.test_is_anomaly
    totals = out.split("\n\n")[-1]
    assert (
        f"of {int(anomalous.sum())})" in totals
        and f"of {int((~anomalous).sum())} normals" in totals
    )
    t = calibrate(Detector.load(run).score(dataset.val), 0.01, method="quantile").threshold
    missed = int((scores[anomalous] <= t).sum())
    false_alarms = int((scores[~anomalous] > t).sum())
    assert f"| quantile | {missed} (" in totals
    assert f"| {false_alarms} (" in totals.split("| quantile |")[1].split("\n")[0]


def test_gpu_smoke_runs_the_whole_suite_on_cpu(tmp_path: Path) -> None:
    """`--smoke`: every suite model (LSTM x2, dense) through ORT and torch, tiny, on CPU."""
    out = tmp_path / "smoke.json"
    proc = _run(
        "bench/gpu.py", "--smoke", "--batches", "8", "--precisions", "fp32", "--json", out,
        timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    tags = {r["backend"].split(":")[0] for r in rows}
    assert tags == {"lstm E=8", "lstm E=16", "dense E=8"}
    for tag in tags:
        kinds = {
            r["backend"].split(": ")[1].split()[0] for r in rows if r["backend"].startswith(tag)
        }
        assert kinds == {"onnxruntime", "torch"}, tag
    assert "Wall time of the whole suite" in proc.stdout


def test_drain_bench_measures_bare_and_daemon_and_writes_its_section(tmp_path: Path) -> None:
    if not Path("/usr/sbin/mosquitto").exists() and not __import__("shutil").which("mosquitto"):
        pytest.skip("mosquitto is not installed")
    bench_md = tmp_path / "BENCHMARKS.md"
    proc = _run(
        "bench/drain.py", "--loads", "single,storm", "--repeats", "1", "--scale", "0.02",
        "--benchmarks", bench_md, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = bench_md.read_text()
    assert "<!-- drain:begin -->" in text and "alert storm" in text
    rows = [line for line in text.splitlines() if line.startswith(("| 1 window", "| 16-window"))]
    assert len(rows) == 2 and all("**" in r for r in rows)  # a daemon / bare ratio each
