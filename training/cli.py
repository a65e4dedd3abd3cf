"""`ecg-train` command line: each subcommand lives in the module named after its job."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from monitor.errors import DataError as SignalDataError
from training.errors import TrainingError

# subcommand -> (module, help). Each module provides
#   configure(parser: argparse.ArgumentParser) -> None
#   main(args: argparse.Namespace) -> int
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("training.train", "train one autoencoder variant into a run directory"),
    "evaluate": ("training.evaluate", "detection metrics and plots for a run dir or .onnx"),
    "export": ("training.export", "export a run to ONNX (threshold and metadata inside)"),
    "compare": ("training.compare", "train, evaluate and time several variants on one data spec"),
    "quantize": (
        "training.quantize",
        "int8 model, written only if held-out ROC AUC drops by at most 0.002",
    ),
    "qrs": (
        "training.qrs",
        "the front end's R-peak detector alone on WFDB records (Se, +P, timing)",
    ),
    "mnist": ("training.mnist", "the MNIST image case studies (latent sweep, denoising)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecg-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.configure(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.main(args))
    except (TrainingError, SignalDataError) as exc:
        # One line, no traceback: bad input is the user's to fix, not a crash.
        print(f"ecg-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
