"""EC57-style beat matching: one-to-one within the tolerance, closest pairs first."""

from __future__ import annotations

import numpy as np

from monitor.frontend.match import match_beats


def test_one_to_one_within_tolerance() -> None:
    ref = np.array([100, 200, 300, 400])
    det = np.array([102, 198, 203, 350, 401])
    m = match_beats(ref, det, 5)
    assert m.ref_idx.tolist() == [0, 1, 3]
    assert m.det_idx.tolist() == [0, 1, 4]
    assert (m.tp, m.fn, m.fp) == (3, 1, 2)


def test_closest_detection_wins_a_shared_reference() -> None:
    m = match_beats(np.array([100]), np.array([96, 99]), 5)
    assert m.det_idx.tolist() == [1]
    assert m.fp == 1


def test_empty_inputs() -> None:
    m = match_beats(np.zeros(0, dtype=np.int64), np.array([5]), 3)
    assert (m.tp, m.fn, m.fp) == (0, 0, 1)
