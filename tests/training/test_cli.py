"""`ecg-train` end to end on small data, and every bad input as one line with a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["fit", "--variant", "dense", "--data", "synthetic:200", "--out", str(out)]
    assert main([*argv, "--epochs", "3", "--latent-dim", "6", "--quiet", "--no-plots"]) == 0
    return out


def test_fit_evaluate_export_evaluate_onnx(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (run_dir / "metrics.json").is_file()
    report = tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                str(run_dir),
                "--data",
                "synthetic:200",
                "--json",
                str(report),
                "--plots",
                str(tmp_path / "plots"),
            ]
        )
        == 0
    )
    metrics = json.loads(report.read_text())
    assert metrics == json.loads(report.read_text()) and metrics["variant"] == "dense"
    assert metrics["per_class"]["wide_qrs"]["n"] > 0
    assert (tmp_path / "plots" / "roc_curve.png").is_file()
    model = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--out", str(model)]) == 0
    onnx_report = tmp_path / "o.json"
    assert (
        main(["evaluate", str(model), "--data", "synthetic:200", "--json", str(onnx_report)]) == 0
    )
    onnx_metrics = json.loads(onnx_report.read_text())
    # the same split (seed from the model's metadata) and the same scores
    assert onnx_metrics["confusion"] == metrics["confusion"]
    assert onnx_metrics["roc_auc"] == pytest.approx(metrics["roc_auc"], abs=1e-6)
    assert "roc_auc" in capsys.readouterr().out


def _bad(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return f"ucr:{path}"


def _row(label: int, values: list[float]) -> str:
    return "\t".join([str(label), *map(str, values)])


CASES = {
    "missing file": (lambda p: "ucr:" + str(p / "nope_TRAIN.arff"), "no such file"),
    "unknown spec": (lambda p: "physionet:chf07", "unknown data spec"),
    "ragged": (
        lambda p: _bad(p, "r.tsv", _row(1, [0.1] * 20) + "\n" + _row(1, [0.1] * 19) + "\n"),
        "ragged",
    ),
    "nan": (lambda p: _bad(p, "n.tsv", _row(1, [0.1] * 19 + [float("nan")]) + "\n"), "NaN"),
    "inf": (lambda p: _bad(p, "i.tsv", _row(1, [0.1] * 19 + [float("inf")]) + "\n"), "Inf"),
    "empty normal class": (
        lambda p: _bad(p, "e.tsv", "\n".join(_row(2, [0.1 * i] * 20) for i in range(9)) + "\n"),
        "no windows of the normal class",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_gives_one_line_and_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_spec, reason = CASES[case]
    spec = make_spec(tmp_path)
    argv = ["fit", "--variant", "dense", "--data", spec, "--out", str(tmp_path / "r"), "--quiet"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert reason in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("ecg-train: error:")


def test_wrong_window_length_for_the_model(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = "\n".join(_row(1 + i % 2, list(np.linspace(0, 1, 50) * i)) for i in range(12))
    spec = _bad(tmp_path, "short.tsv", rows + "\n")
    rc = main(["evaluate", str(run_dir), "--data", spec])
    err = capsys.readouterr().err
    assert rc == 2 and "window length 50 does not match the model's 140" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    rc = main(["evaluate", str(run_dir / "absent.onnx"), "--data", "synthetic:50"])
    assert rc == 2 and "ecg-train: error:" in capsys.readouterr().err


def test_not_a_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "not a run directory" in capsys.readouterr().err
