"""Synthetic continuous generator (deterministic, labelled) and the WFDB 212 reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitor.frontend.synthetic import KINDS, synthetic_stream
from monitor.frontend.wfdb_io import read_annotations, read_record
from tests.monitor.frontend_data import mitdb_record


def test_generator_is_deterministic_and_labels_every_kind() -> None:
    a = synthetic_stream(300, 360.0, seed=4, anomaly_rate=0.2, artefacts=2, lead_off=1)
    b = synthetic_stream(300, 360.0, seed=4, anomaly_rate=0.2, artefacts=2, lead_off=1)
    assert np.array_equal(a.signal_mv, b.signal_mv) and np.array_equal(a.r_peaks, b.r_peaks)
    assert set(a.kind_names()) == set(KINDS)
    l0, l1 = a.lead_off[0]
    assert np.ptp(a.signal_mv[l0:l1]) == 0.0
    assert not np.any((a.r_peaks >= l0) & (a.r_peaks < l1))
    assert not np.array_equal(a.signal_mv, synthetic_stream(300, 360.0, seed=5).signal_mv)


def test_premature_beats_come_early() -> None:
    s = synthetic_stream(600, 250.0, seed=6, anomaly_rate=0.2)
    rr = np.diff(s.r_peaks)
    pre = rr[s.kinds[1:] == KINDS.index("premature")]
    normal = rr[(s.kinds[1:] == 0) & (s.kinds[:-1] == 0)]
    assert pre.mean() < 0.75 * normal.mean()


def _write_212(path: Path, adc: np.ndarray) -> None:
    a = adc[:, 0] & 0xFFF
    b = adc[:, 1] & 0xFFF
    raw = np.stack([a & 0xFF, ((a >> 8) & 0x0F) | (((b >> 8) & 0x0F) << 4), b & 0xFF], axis=1)
    raw.astype(np.uint8).tofile(path)


def test_212_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    adc = rng.integers(-2048, 2048, size=(1000, 2))
    _write_212(tmp_path / "r1.dat", adc)
    (tmp_path / "r1.hea").write_text(
        "r1 2 360 1000\nr1.dat 212 200 11 1024 0 0 0 V5\nr1.dat 212 100 11 0 0 0 0 MLII\n"
    )
    rec = read_record(tmp_path / "r1")
    assert rec.sig_names == ("V5", "MLII") and rec.fs == 360.0
    np.testing.assert_allclose(rec.lead("MLII"), adc[:, 1] / 100.0)
    np.testing.assert_allclose(rec.signals_mv[:, 0], (adc[:, 0] - 1024) / 200.0)


@pytest.mark.data
@pytest.mark.parametrize("name", ["114", "207"])
def test_reader_matches_wfdb_package(name: str) -> None:
    wfdb = pytest.importorskip("wfdb")
    base = mitdb_record(name)
    rec = read_record(base)
    ref = wfdb.rdrecord(str(base))
    assert list(rec.sig_names) == ref.sig_name
    np.testing.assert_array_equal(rec.signals_mv, ref.p_signal)
    ann = read_annotations(base)
    ref_ann = wfdb.rdann(str(base), "atr")
    np.testing.assert_array_equal(ann.sample, ref_ann.sample)
    assert list(ann.symbol) == ref_ann.symbol
