"""Signal quality states: lead-off (flat line), noise, back to good, chunking-independent."""

from __future__ import annotations

import numpy as np

from monitor.frontend.quality import QualityMonitor
from monitor.frontend.segment import Segmentation
from monitor.frontend.stream import FrontEnd
from monitor.frontend.synthetic import synthetic_stream


def _changes(x: np.ndarray, fs: float, size: int) -> list[tuple[str, int]]:
    fe = FrontEnd(Segmentation(), fs)
    out = []
    for i in range(0, x.size, size):
        out += [(c.state, c.since) for c in fe.feed(i, x[i : i + size]).quality_changes]
    return out


def test_clean_signal_becomes_good_and_stays_good() -> None:
    s = synthetic_stream(120, 250.0, seed=21)
    assert _changes(s.signal_mv, 250.0, 250) == [("good", 0)]


def test_lead_off_stretch_is_reported_and_recovered() -> None:
    fs = 250.0
    s = synthetic_stream(200, fs, seed=22, lead_off=2)
    ch = _changes(s.signal_mv, fs, 100)
    for l0, l1 in s.lead_off.tolist():
        hits = [since for state, since in ch if state == "lead_off" and l0 - fs <= since <= l1]
        assert hits, (l0, l1, ch)
        back = [since for state, since in ch if state == "good" and since > l0]
        assert back and back[0] >= l1  # good again only after the electrode is back
    assert ch[-1][0] == "good"


def test_strong_noise_is_noisy() -> None:
    fs = 360.0
    s = synthetic_stream(60, fs, seed=23)
    x = s.signal_mv.copy()
    rng = np.random.default_rng(0)
    x[round(20 * fs) : round(35 * fs)] += rng.normal(0, 1.0, round(15 * fs))
    states = [st for st, since in _changes(x, fs, 360) if 19 * fs <= since <= 36 * fs]
    assert "noisy" in states


def test_changes_do_not_depend_on_chunking() -> None:
    fs = 250.0
    s = synthetic_stream(120, fs, seed=24, lead_off=1, artefacts=2)
    assert _changes(s.signal_mv, fs, 7) == _changes(s.signal_mv, fs, 2500)


def test_saturation_is_lead_off() -> None:
    q = QualityMonitor(250.0)
    x = np.clip(np.random.default_rng(1).normal(0, 3, 250 * 10), -2.0, 2.0)
    states = [c.state for c in q.feed(x)]
    assert states and states[-1] == "lead_off"
