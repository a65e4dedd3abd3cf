"""Streaming R-peak detector: accuracy, chunking invariance, latency bound, gaps, horizon."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.frontend.match import BEAT_SYMBOLS, match_beats
from monitor.frontend.qrs import QrsDetector, detect_r_peaks
from monitor.frontend.synthetic import synthetic_stream
from monitor.frontend.wfdb_io import read_annotations, read_record
from tests.monitor.frontend_data import mitdb_record


def _chunked(x: np.ndarray, fs: float, size: int, start: int = 0) -> np.ndarray:
    det = QrsDetector(fs, start)
    parts = [det.feed(x[i : i + size]) for i in range(0, x.size, size)]
    parts.append(det.flush())
    return np.concatenate(parts)


@pytest.mark.parametrize("fs", [125.0, 250.0, 360.0, 500.0])
def test_finds_synthetic_beats_within_one_sample_scale(fs: float) -> None:
    s = synthetic_stream(180, fs, seed=3, anomaly_rate=0.1)
    peaks = detect_r_peaks(s.signal_mv, fs)
    m = match_beats(s.r_peaks, peaks, round(0.05 * fs))
    assert m.fn <= 1 and m.fp == 0
    err = np.abs(peaks[m.det_idx] - s.r_peaks[m.ref_idx]) / fs
    assert np.median(err) <= max(0.005, 1.0 / fs)  # one sample at 125 Hz is 8 ms


@pytest.mark.parametrize("size_s", [0.1, 1.0, 10.0])
def test_any_chunking_gives_the_same_peaks_to_the_sample(size_s: float) -> None:
    fs = 360.0
    s = synthetic_stream(120, fs, seed=5, anomaly_rate=0.1, artefacts=2)
    whole = detect_r_peaks(s.signal_mv, fs)
    assert np.array_equal(_chunked(s.signal_mv, fs, round(size_s * fs)), whole)


def test_one_sample_chunks_give_the_same_peaks() -> None:
    fs = 250.0
    s = synthetic_stream(25, fs, seed=6, anomaly_rate=0.2)
    assert np.array_equal(_chunked(s.signal_mv, fs, 1), detect_r_peaks(s.signal_mv, fs))


def test_every_peak_is_reported_within_latency_s() -> None:
    fs = 250.0
    s = synthetic_stream(90, fs, seed=7, anomaly_rate=0.1, hr_bpm=45)
    det = QrsDetector(fs)
    size = 25
    lags = []
    for i in range(0, s.signal_mv.size, size):
        newest = min(i + size, s.signal_mv.size) - 1
        lags += [(newest - p) / fs for p in det.feed(s.signal_mv[i : i + size]).tolist()]
    assert len(lags) > 50
    assert max(lags) <= det.latency_s


def test_reset_restarts_detection_at_the_new_start_index() -> None:
    fs = 360.0
    s = synthetic_stream(60, fs, seed=8)
    det = QrsDetector(fs)
    det.feed(s.signal_mv[: int(20 * fs)])
    det.reset(10_000_000)
    later = np.concatenate([det.feed(s.signal_mv), det.flush()])
    assert np.array_equal(later, detect_r_peaks(s.signal_mv, fs) + 10_000_000)


def test_flat_signal_gives_no_peaks() -> None:
    assert detect_r_peaks(np.zeros(36_000), 360.0).size == 0


def _same_after_horizon(x: np.ndarray, fs: float, t0: int) -> None:
    full = detect_r_peaks(x, fs)
    det = QrsDetector(fs, start=t0)
    fresh = np.concatenate([det.feed(x[t0:]), det.flush()])
    cut = t0 + det.horizon_s * fs
    assert np.array_equal(fresh[fresh > cut], full[full > cut])


@pytest.mark.parametrize("t0_s", [7.3, 31.0, 64.9])
def test_a_fresh_detector_agrees_after_horizon_s(t0_s: float) -> None:
    fs = 360.0
    s = synthetic_stream(150, fs, seed=9, anomaly_rate=0.15, artefacts=2)
    _same_after_horizon(s.signal_mv, fs, round(t0_s * fs))


@pytest.mark.data
@pytest.mark.parametrize(("record", "t0_s"), [("208", 100.0), ("203", 333.3), ("101", 50.0)])
def test_a_fresh_detector_agrees_after_horizon_s_on_mitdb(record: str, t0_s: float) -> None:
    rec = read_record(mitdb_record(record))
    x = rec.lead("MLII")[: round(600 * rec.fs)]
    _same_after_horizon(x, rec.fs, round(t0_s * rec.fs))


@pytest.mark.data
@pytest.mark.parametrize("record", ["101", "119", "208"])
def test_mitdb_record_detection_at_150_and_50_ms(record: str) -> None:
    base = mitdb_record(record)
    rec = read_record(base)
    ann = read_annotations(base)
    ref = ann.sample[[s in BEAT_SYMBOLS for s in ann.symbol]]
    peaks = detect_r_peaks(rec.lead("MLII"), rec.fs)
    for tol_s, floor in ((0.150, 0.99), (0.050, 0.985)):
        m = match_beats(ref, peaks, round(tol_s * rec.fs))
        assert m.tp / m.n_ref >= floor
        assert m.tp / m.n_det >= floor


def test_chunk_invariance_on_a_real_record_segment_when_present() -> None:
    rec = read_record(mitdb_record("203"))
    x = rec.lead("MLII")[: round(120 * rec.fs)]
    assert np.array_equal(_chunked(x, rec.fs, 36), detect_r_peaks(x, rec.fs))
