"""The view's fleet state: stream decoding, decimation, heart rate, alarms, page updates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.stream_wire import encode_stream_binary as encode_ecgs
from monitor.view import state as state_module
from monitor.view.state import (
    ClientCursor,
    Decimator,
    FleetState,
    RateEstimator,
)
from tests.view.fleet import StreamDevice

FS = 250.0


def _device(hr: float = 72.0, seed: int = 0) -> StreamDevice:
    return StreamDevice("bed-000", FS, hr, np.random.default_rng(seed), 1_764_337_200.0)


def _alert(seq: int, ts: float, **extra: object) -> bytes:
    body = {"device_id": "bed-000", "seq": seq, "ts": ts, "score": 40.0, "threshold": 26.0}
    return json.dumps({**body, **extra}).encode()


@settings(max_examples=40, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 400), min_size=1, max_size=12),
    fs=st.sampled_from([125.0, 250.0, 360.0, 500.0]),
)
def test_decimation_is_the_same_whatever_the_chunking(cuts: list[int], fs: float) -> None:
    x = np.random.default_rng(1).normal(size=sum(cuts)).astype(np.float32)
    whole = Decimator(fs)
    _, ref, _ = whole.feed(0, x)
    part = Decimator(fs)
    got, start = [], 0
    for n in cuts:
        _, pts, gap = part.feed(start, x[start : start + n])
        assert not gap
        got.append(pts)
        start += n
    np.testing.assert_array_equal(np.concatenate(got), ref)
    assert ref.size == x.size // (2 * whole.k) * 2 if whole.k > 1 else ref.size == x.size


def test_decimation_keeps_r_peaks_and_drops_redelivered_samples() -> None:
    d = Decimator(500.0)  # k = 5
    x = np.zeros(500, np.float32)
    x[252] = 1.5  # a one-sample spike inside a bin
    _, pts, _ = d.feed(0, x)
    assert d.k == 5 and pts.max() == np.float32(1.5)
    _, again, gap = d.feed(250, x[250:])  # overlap: nothing new
    assert again.size == 0 and not gap
    _, later, gap = d.feed(1000, x)  # a gap
    assert gap and later.size == 100  # 100 Hz
    assert later.min() == 0.0 and later.max() == np.float32(1.5)


def test_heart_rate_from_the_decimated_stream_matches_the_device() -> None:
    dev = _device(hr=75.0)
    est = RateEstimator()
    dec = Decimator(FS)
    for _ in range(40):
        start, x = dev.samples(125)
        first, pts, _ = dec.feed(start, x)
        est.feed(first / FS, dec.k / FS, pts)
    hr = est.bpm(dev.now_s())
    assert hr is not None and abs(hr - 75.0) < 4.0


def test_a_stream_alert_becomes_an_alarm_with_its_beat_and_can_be_acknowledged() -> None:
    s = FleetState()
    dev = _device()
    for _ in range(8):
        start, x = dev.samples(250)
        s.on_message(
            "ecg/bed-000/stream", encode_ecgs(start, dev.t_origin + start / FS, FS, x), 0.0
        )
    r = 1000
    s.on_message(
        "ecg/bed-000/alert",
        _alert(r, dev.t_origin + r / FS, source="stream", p_value=0.001, hr_bpm=80.0),
        1.0,
    )
    a = s.alarms[-1]
    assert (a.kind, a.seq, a.p_value, a.r_index) == ("stream", r, 0.001, r)
    assert a.beat is not None and a.beat["fs"] == FS
    assert a.beat["r"] == round(0.6 * FS)  # BEAT_PRE_S before the R peak
    assert s.devices["bed-000"].unacked == 1
    assert s.ack([a.id]) == 1 and s.devices["bed-000"].unacked == 0
    assert s.ack([a.id]) == 0  # once


def test_an_alert_whose_beat_has_not_all_arrived_gets_it_when_the_samples_come() -> None:
    s = FleetState()
    dev = _device()
    start, x = dev.samples(500)
    s.on_message("ecg/bed-000/stream", encode_ecgs(start, dev.t_origin, FS, x), 0.0)
    s.on_message("ecg/bed-000/alert", _alert(450, dev.t_origin + 450 / FS, source="stream"), 1.0)
    assert s.alarms[-1].beat is None
    start, x = dev.samples(250)
    s.on_message("ecg/bed-000/stream", encode_ecgs(start, dev.t_origin + 2.0, FS, x), 1.1)
    assert s.alarms[-1].beat is None  # queued until the next tick processes it
    s.tick(1.2, {"bed-000"})
    beat = s.alarms[-1].beat
    assert beat is not None and len(beat["values"]) == round(1.4 * FS)


def test_pages_get_signal_only_for_devices_they_show() -> None:
    s = FleetState()
    for i in range(3):
        dev = StreamDevice(f"bed-{i:03d}", FS, 70.0, np.random.default_rng(i), 100.0)
        start, x = dev.samples(250)
        s.on_message(f"ecg/{dev.id}/stream", encode_ecgs(start, 100.0, FS, x), 0.0)
    page = ClientCursor()
    snap = s.snapshot(page)
    assert [d["id"] for d in snap["devices"]] == ["bed-000", "bed-001", "bed-002"]
    page.watched = {"bed-001"}
    s.tick(0.1, page.watched)
    upd = s.update(page)
    assert upd is not None and set(upd["signal"]) == {"bed-001"}
    assert s.update(page) is None  # nothing new since


def test_quality_status_and_rejects_reach_the_summary() -> None:
    s = FleetState()
    q = {"device_id": "bed-000", "state": "lead_off", "since": 9, "since_ts": 3.0, "reason": "flat"}
    s.on_message("ecg/bed-000/quality", json.dumps(q).encode(), 0.0)
    s.on_message("ecg/bed-000/rejected", b'{"code": "bad_json"}', 0.0)
    s.on_message("ecg-monitor/d1/status", b'{"state": "online", "model": "m"}', 0.0)
    summary = s.devices["bed-000"].summary()
    assert (summary["quality"], summary["quality_reason"], summary["rejects"]) == (
        "lead_off",
        "flat",
        1,
    )
    assert s.meta()["daemons"][0]["state"] == "online"
    s.on_message("ecg-monitor/d1/status", b"", 0.0)  # retained status cleared
    assert s.meta()["daemons"] == []
    s.on_message("ecg/bed-000/stream", b"ECGS not a frame", 0.0)  # the daemon rejects it
    s.on_message("ecg/bad id/alert", b"{}", 0.0)
    s.on_message("other/x/alert", b"{}", 0.0)
    assert set(s.devices) == {"bed-000"}


def test_the_cli_does_not_need_aiohttp_unless_the_view_runs() -> None:
    """The daemon host installs no aiohttp: building every command's parser must not import it."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = (
        "import sys, monitor.cli; monitor.cli.build_parser(); "
        "assert 'aiohttp' not in sys.modules, 'aiohttp imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_device_count_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random device ids cannot grow the view's memory without bound."""
    monkeypatch.setattr(state_module, "MAX_DEVICES", 2)
    s = FleetState()
    for i in range(3):
        s.on_message(f"ecg/d{i}/alert", _alert(1, 2.0), 0.0)
    assert set(s.devices) == {"d0", "d1"} and s.skipped == 1
