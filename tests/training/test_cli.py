"""`ecg-train` end to end on small data, and every bad input as one line with a non-zero exit."""

from __future__ import annotations

import argparse
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest

from monitor.cli import package_version
from tests.cli_help import check_help
from training.cli import build_parser, main
from training.models import MODELS
from training.train import RECIPES


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


# A value of the wrong type for each recipe key, as TOML, and the words the error must hold.
RECIPE_CASES = {
    "epochs as a word": ('epochs = "two"', "epochs must be an integer, got 'two'"),
    "epochs as a float": ("epochs = 2.5", "epochs must be an integer"),
    "epochs as a date": ("epochs = 1979-05-27", "epochs must be an integer"),
    "latent_dim as a list": ("latent_dim = [8]", "latent_dim must be an integer"),
    "batch_size as a bool": ("batch_size = true", "batch_size must be an integer"),
    "patience as a string": ('patience = "30"', "patience must be an integer"),
    "patience zero": ("patience = 0", "patience must be >= 1"),
    "lr as a string": ('lr = "fast"', "lr must be a finite number"),
    "lr nan": ("lr = nan", "lr must be a finite number"),
    "lr negative": ("lr = -0.1", "lr must be > 0"),
    "fpr as a string": ('fpr = "1%"', "fpr must be a finite number"),
    "fpr inf": ("fpr = inf", "fpr must be a finite number"),
    "fpr out of range": ("fpr = 1.5", "fpr must be in (0, 1)"),
    "grad_clip nan": ("grad_clip = nan", "grad_clip must be a finite number"),
    "grad_clip as a table": ("grad_clip = {max = 1}", "grad_clip must be a finite number"),
    "schedule as a number": ("schedule = 3", "schedule must be a string"),
    "schedule unknown": ('schedule = "step"', "schedule must be one of"),
    "calibration unknown": ('calibration = "median"', "calibration must be one of"),
    "folds as a word": ('folds = "five"', "folds must be an integer"),
    "folds one": ("folds = 1", "folds must be >= 2"),
    "score unknown": ('score = "l2"', "score must be one of"),
    "deploy unknown": ('deploy = "all"', "deploy must be one of"),
    "deploy ensemble without its folds": (
        'deploy = "ensemble"\ncalibration = "quantile"',
        "deploy ensemble deploys the cross-conformal fold models",
    ),
    "variant as a list": ('variant = ["dense"]', "unknown variant"),
    "variant unknown": ('variant = "gru"', "unknown variant 'gru'"),
    "options not a table": ("options = 5", "options must be a table"),
    "option unknown": ("[options]\nwidth = 3", "unknown option 'width'"),
    "option int as a word": ('[options]\nhidden = "big"', "hidden must be an integer"),
    "option float as a word": ('[options]\nl1 = "lots"', "l1 must be a finite number"),
    "option bool as a number": ("[options]\nzscore = 1", "zscore must be true or false"),
    "option str as a number": ("[options]\noutput = 1", "output must be a string"),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_bad_recipe_value_gives_one_line_naming_file_and_key(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line, reason = RECIPE_CASES[case]
    recipe = tmp_path / "recipe.toml"
    head = "" if line.startswith("variant") else 'variant = "sparse-l1"\n'
    recipe.write_text(head + line + "\n")
    argv = ["fit", "--config", str(recipe), "--data", "synthetic:50", "--out", str(tmp_path)]
    rc = main([*argv, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"ecg-train: error: {recipe}: ") and reason in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_every_recipe_key_is_covered_by_a_bad_value_case() -> None:
    from training.train import CONFIG_KEYS  # noqa: PLC0415

    covered = {line.split()[0].strip("[]") for line, _ in RECIPE_CASES.values()}
    assert set(CONFIG_KEYS) <= covered


def test_bad_option_on_the_command_line_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fit", "--variant", "denoising", "--data", "synthetic:50", "--option", "sigma=lots"]
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sigma must be a finite number, got 'lots'" in err and err.count("\n") == 1


def test_every_subcommand_shows_its_defaults_and_a_description_for_users() -> None:
    check_help(build_parser(), "ecg-train")


def test_fit_help_states_a_default_for_every_option_the_recipe_fills() -> None:
    """Recipe-filled flags have no argparse default; their help names the recipe's values."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    fit = sub.choices["fit"]
    for action in fit._actions:
        if action.dest in RECIPES["lstm"] or action.dest in ("fpr", "calibration"):
            assert action.help and "(default: " in action.help, action.dest
    text = " ".join(fit.format_help().split())
    assert f"(default: the recipe's, {RECIPES['dense']['epochs']}; lstm 200)" in text


def test_fit_help_lists_the_variant_options_with_their_true_defaults() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    option = next(a for a in sub.choices["fit"]._actions if a.dest == "option")
    assert option.help is not None
    pairs = re.findall(r"(\w+)=([\w.]+)", option.help)
    assert len(pairs) >= 7
    defaults = {
        (name, str(p.default))
        for cls in MODELS.values()
        for klass in cls.__mro__
        if "__init__" in klass.__dict__
        for name, p in inspect.signature(klass.__dict__["__init__"]).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    for pair in pairs:
        assert pair in defaults, pair


def test_ecg_train_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out == f"ecg-train {package_version()}\n"
