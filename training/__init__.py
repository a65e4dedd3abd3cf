"""ecg-monitor training: autoencoder variants, calibration, evaluation, ONNX export.

Submodules that need torch import it themselves; `training.data` is numpy-only so
the daemon host (no torch) can use the synthetic generator and the UCR reader.
"""

__version__ = "0.1.0"
