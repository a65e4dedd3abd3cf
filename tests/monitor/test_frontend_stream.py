"""Beat cutting and the per-device front end: chunking, overlap, gaps, restarts, metadata."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.errors import DataError
from monitor.frontend.segment import BeatSet, Segmentation, cut_beats
from monitor.frontend.stream import FrontEnd, process_record
from monitor.frontend.synthetic import synthetic_stream

SEG = Segmentation(context=("pre_rr_ratio", "post_rr_ratio", "local_rr_s"))


def _stream(fe: FrontEnd, x: np.ndarray, size: int, start: int = 0) -> BeatSet:
    parts = [fe.feed(start + i, x[i : i + size]).beats for i in range(0, x.size, size)]
    parts.append(fe.flush().beats)
    return BeatSet.concat(parts, fe.seg)


def test_segmentation_json_round_trip_and_validation() -> None:
    assert Segmentation.from_json(SEG.to_json()) == SEG
    with pytest.raises(DataError):
        Segmentation(context=("bogus",))
    with pytest.raises(DataError):
        Segmentation.from_json('{"pre_s": 0.2, "surprise": 1}')


@pytest.mark.parametrize("size", [1, 36, 360, 3600])
def test_streamed_beats_equal_process_record_bit_for_bit(size: int) -> None:
    fs = 360.0
    s = synthetic_stream(40 if size == 1 else 120, fs, seed=11, anomaly_rate=0.1)
    offline = process_record(s.signal_mv, fs, SEG)
    online = _stream(FrontEnd(SEG, fs), s.signal_mv, size)
    assert len(offline) > 30
    assert np.array_equal(online.r_index, offline.r_index)
    assert np.array_equal(online.windows, offline.windows)
    assert np.array_equal(online.context, offline.context)


def test_windows_are_centred_on_the_r_peak_and_context_is_rr() -> None:
    fs = 250.0
    s = synthetic_stream(60, fs, seed=12, anomaly_rate=0.0, noise_mv=0.0, wander_mv=0.0)
    seg = Segmentation(
        pre_s=0.25,
        post_s=0.45,
        window_length=140,
        normalise="none",
        context=("pre_rr_s", "post_rr_s"),
    )
    beats = cut_beats(s.signal_mv, fs, s.r_peaks, seg)
    assert beats.r_index[0] == s.r_peaks[1]  # the first beat only anchors the pre-RR
    peak_at = np.argmax(beats.windows, axis=1)
    assert np.all(np.abs(peak_at - 50) <= 2)  # 0.25 s of 0.70 s -> sample 50 of 140
    rr = np.diff(s.r_peaks) / fs
    np.testing.assert_allclose(beats.context[:, 0], rr[: len(beats)], rtol=1e-5)
    np.testing.assert_allclose(beats.context[:, 1], rr[1 : len(beats) + 1], rtol=1e-5)


def test_redelivered_chunks_change_nothing() -> None:
    fs = 250.0
    s = synthetic_stream(60, fs, seed=13)
    ref = _stream(FrontEnd(SEG, fs), s.signal_mv, 250)
    fe = FrontEnd(SEG, fs)
    parts = []
    for i in range(0, s.signal_mv.size, 250):
        parts.append(fe.feed(i, s.signal_mv[i : i + 250]).beats)
        j = max(0, i - 400)  # an overlapping redelivery
        parts.append(fe.feed(j, s.signal_mv[j : i + 250]).beats)
    parts.append(fe.flush().beats)
    got = BeatSet.concat(parts, SEG)
    assert np.array_equal(got.r_index, ref.r_index)


def test_a_gap_restarts_detection_and_reports_gap() -> None:
    fs = 250.0
    s = synthetic_stream(60, fs, seed=14)
    x = s.signal_mv
    fe = FrontEnd(SEG, fs)
    first = fe.feed(0, x[:5000])
    out = fe.feed(6000, x[6000:])
    assert [c.state for c in out.quality_changes][:1] == ["gap"]
    assert out.quality_changes[0].since == 6000
    later = BeatSet.concat([out.beats, fe.flush().beats], SEG)
    fresh = FrontEnd(SEG, fs)
    expect = _stream(fresh, x[6000:], x.size, start=6000)
    assert np.array_equal(later.r_index, expect.r_index)
    assert np.all(later.r_index > 6000) and len(first.beats) > 0


def test_non_finite_chunk_is_refused_and_state_survives() -> None:
    fs = 250.0
    s = synthetic_stream(30, fs, seed=17)
    fe = FrontEnd(SEG, fs)
    bad = s.signal_mv[:250].copy()
    bad[3] = np.nan
    with pytest.raises(DataError):
        fe.feed(0, bad)
    ref = _stream(FrontEnd(SEG, fs), s.signal_mv, 250)
    assert np.array_equal(_stream(fe, s.signal_mv, 250).r_index, ref.r_index)


def test_new_fs_restarts_the_pipeline() -> None:
    s = synthetic_stream(30, 250.0, seed=15)
    fe = FrontEnd(SEG, 360.0)
    fe.feed(0, np.zeros(3600))
    out = fe.feed(3600, s.signal_mv, fs=250.0)
    assert fe.fs == 250.0 and out.quality_changes[0].state == "gap"


def test_restart_from_needed_from_reproduces_pending_beats() -> None:
    fs = 360.0
    s = synthetic_stream(150, fs, seed=16, anomaly_rate=0.1)
    x = s.signal_mv
    full = _stream(FrontEnd(SEG, fs), x, 360)
    fe = FrontEnd(SEG, fs)
    crash = round(100 * fs)
    emitted = _stream_no_flush(fe, x[:crash], 360)
    since = fe.needed_from()
    assert since < crash
    again = _stream(FrontEnd(SEG, fs), x[since:], 360, start=since)
    last = emitted.r_index[-1]
    want = full.r_index[full.r_index > last]
    got = again.r_index[again.r_index > last]
    assert want.size > 50
    assert np.array_equal(got, want)


def _stream_no_flush(fe: FrontEnd, x: np.ndarray, size: int) -> BeatSet:
    return BeatSet.concat(
        [fe.feed(i, x[i : i + size]).beats for i in range(0, x.size, size)], fe.seg
    )
