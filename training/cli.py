"""`ecg-train` command line: the table of subcommands and the texts `--help` shows.

Each subcommand's module provides `configure(parser)` and `main(args) -> int`; the parser
itself (with `--version` and defaults in every help line) is monitor.cli's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from monitor.cli import build_cli
from monitor.errors import DataError as SignalDataError
from training.errors import TrainingError

DESCRIPTION = (
    "Train autoencoders on heartbeat windows (UCR ECG5000 or the built-in synthetic "
    "generator), set their alarm threshold from normal beats, evaluate them, and export them "
    "to ONNX for ecg-monitor. Also the MNIST image case studies."
)

# subcommand -> (module, one-line help, description shown by `ecg-train COMMAND --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "fit": (
        "training.train",
        "train one autoencoder variant into a run directory",
        "Train one autoencoder variant on the normal beats of a data set. Training stops "
        "early when the validation loss has not improved for --patience epochs and keeps the "
        "best weights; the alarm threshold is then set so that about --fpr of normal "
        "validation beats would alarm, and the model is evaluated on the held-out test beats. "
        "The run directory receives the checkpoint, config.json, history.json, "
        "calibration.json, metrics.json and plots/. Settings come from the variant's recipe "
        "(the same as configs/train-VARIANT.toml), then --config, then the flags.",
    ),
    "evaluate": (
        "training.evaluate",
        "detection metrics and plots for a run dir or .onnx",
        "Detection quality of a trained model on the test beats of a data set: ROC AUC, PR "
        "AUC, precision, recall, F1 and false-alarm rate at the model's threshold, the "
        "confusion matrix and the detection rate per class. MODEL is a run directory (needs "
        "torch) or an exported .onnx file (needs ONNX Runtime only).",
    ),
    "export": (
        "training.export",
        "export a run to ONNX (threshold and metadata inside)",
        "Write a run as the ONNX model ecg-monitor loads: input `windows` [batch, L], outputs "
        "`reconstruction` and `score`, the threshold and provenance in its metadata. The file "
        "is checked against the PyTorch model (several batch sizes) before the command "
        "succeeds.",
    ),
    "compare": (
        "training.compare",
        "train, evaluate and time several variants on one data spec",
        "Train, evaluate, export and time several variants on the same data; writes "
        "OUT/compare.md (one table), OUT/compare.json and one run directory per variant.",
    ),
    "quantize": (
        "training.quantize",
        "int8 model, written only if held-out ROC AUC drops by at most 0.002",
        "Write an int8 copy of an exported model (dynamic quantisation), only if its ROC AUC "
        "on held-out beats stays within --max-auc-drop of the fp32 model's.",
    ),
    "mnist": (
        "training.mnist",
        "the MNIST image case studies (latent sweep, denoising)",
        "The MNIST image case studies: a latent-size sweep of the plain dense autoencoder, "
        "and denoising with Gaussian and speckle noise. Images are split (seeded) into a "
        "training and a held-out part.",
    ),
    "qrs": (
        "training.qrs",
        "the front end's R-peak detector alone on WFDB records (Se, +P, timing)",
        "Run the streaming R-peak detector alone on WFDB records and match its beats to the "
        "reference annotations (EC57-style, --tolerance-ms): sensitivity, positive "
        "predictivity, timing error, and its time per hour of signal.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    return build_cli("ecg-train", DESCRIPTION, COMMANDS)


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
