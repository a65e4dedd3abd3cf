"""Causal band-pass: state carried across chunks, designs for every fs the front end takes."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.errors import DataError
from monitor.frontend.filters import StreamFilter


@pytest.mark.parametrize("fs", [125.0, 250.0, 360.0, 500.0])
def test_chunked_output_equals_one_call_bit_for_bit(fs: float) -> None:
    x = np.random.default_rng(0).normal(size=int(20 * fs))
    whole = StreamFilter(fs).feed(x)
    for size in (1, 7, int(fs // 10), int(fs)):
        f = StreamFilter(fs)
        parts = [f.feed(x[i : i + size]) for i in range(0, x.size, size)]
        assert np.array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("fs", [125.0, 250.0, 360.0, 500.0])
def test_band_passes_qrs_band_and_removes_baseline(fs: float) -> None:
    t = np.arange(int(30 * fs)) / fs
    f = StreamFilter(fs, 0.5, 40.0)
    y10 = f.feed(np.sin(2 * np.pi * 10 * t))[int(10 * fs) :]
    assert 0.9 < np.abs(y10).max() < 1.1
    f.reset()
    dc = f.feed(np.full(t.size, 3.0))[int(20 * fs) :]
    assert np.abs(dc).max() < 0.01
    assert 0.0 < f.delay_s < 0.05


def test_reset_forgets_state_and_empty_chunk_is_a_no_op() -> None:
    f = StreamFilter(250.0)
    x = np.random.default_rng(1).normal(size=500)
    first = f.feed(x)
    assert f.feed(np.zeros(0)).size == 0
    f.reset()
    assert np.array_equal(f.zi, np.zeros_like(f.zi))
    assert np.array_equal(f.feed(x), first)


@pytest.mark.parametrize("fs", [50.0, 2000.0, float("nan")])
def test_rejects_sampling_rates_outside_the_design_range(fs: float) -> None:
    with pytest.raises(DataError):
        StreamFilter(fs)
