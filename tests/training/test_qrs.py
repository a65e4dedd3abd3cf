"""`ecg-train qrs`: the detector alone on WFDB records, EC57 matching, JSON report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monitor.frontend.match import BEAT_SYMBOLS
from monitor.frontend.wfdb_io import read_annotations
from tests.monitor.frontend_data import MITDB, mitdb_record
from training.cli import main
from training.qrs import DS1, DS2, parse_records, run_record, summary


def test_named_record_sets() -> None:
    assert len(DS1) == len(DS2) == 22 and not set(DS1) & set(DS2)
    assert parse_records("101, 114", Path(".")) == ["101", "114"]


@pytest.mark.data
def test_perfect_detector_scores_one_and_an_empty_one_scores_zero() -> None:
    mitdb_record("119")

    def oracle(x: np.ndarray, fs: float) -> np.ndarray:
        ann = read_annotations(MITDB / "119")
        return ann.sample[[s in BEAT_SYMBOLS for s in ann.symbol]]

    perfect = summary([run_record(MITDB, "119", oracle)])
    assert perfect["se_50ms"] == perfect["ppv_50ms"] == 1.0
    assert perfect["median_abs_error_ms"] == 0.0
    empty = summary([run_record(MITDB, "119", lambda x, fs: np.zeros(0, dtype=np.int64))])
    assert empty["se_150ms"] == 0.0


@pytest.mark.data
def test_cli_writes_per_record_and_gross_json(tmp_path: Path) -> None:
    mitdb_record("114")
    out = tmp_path / "qrs.json"
    assert main(["qrs", "--data", f"mitdb:{MITDB}", "--records", "114", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["records"][0]["record"] == "114"
    assert report["gross"]["se_150ms"] > 0.99 and report["gross"]["ppv_150ms"] > 0.99
    assert report["gross"]["cpu_s_per_hour"] > 0


def test_cli_rejects_a_non_mitdb_spec() -> None:
    assert main(["qrs", "--data", "synthetic:100"]) == 2
