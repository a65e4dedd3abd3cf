"""Micro-batching: full batches at max_batch, partial ones after max_wait, frames split cleanly."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.batcher import Batch, Batcher
from monitor.wire import Frame


def frame(device: str, seq: int, count: int, length: int = 4) -> Frame:
    base = np.arange(seq, seq + count, dtype=np.float32)[:, None]
    return Frame(device, seq, 0.0, None, np.repeat(base, length, axis=1))


def drain(batcher: Batcher[str]) -> list[Batch[str]]:
    async def go() -> list[Batch[str]]:
        batcher.close()
        out = []
        while (b := await batcher.get()) is not None:
            out.append(b)
        return out

    return asyncio.run(go())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=20), st.integers(1, 33))
def test_batches_hold_every_window_once_in_order(counts: list[int], max_batch: int) -> None:
    async def go() -> list[Batch[str]]:
        b: Batcher[str] = Batcher(max_batch, 0.0)
        seq = 0
        for i, c in enumerate(counts):
            b.put(frame(f"d{i}", seq, c), f"m{i}")
            seq += c
        b.close()
        out = []
        while (batch := await b.get()) is not None:
            out.append(batch)
        return out

    batches = asyncio.run(go())
    assert all(0 < b.size <= max_batch for b in batches)
    assert all(b.size == max_batch for b in batches[:-1])
    rows = np.concatenate([b.windows[:, 0] for b in batches])
    np.testing.assert_array_equal(rows, np.arange(sum(counts), dtype=np.float32))
    for b in batches:  # each segment points at its rows of the batch
        for seg in b.segments:
            got = b.windows[seg.offset : seg.offset + seg.count, 0]
            np.testing.assert_array_equal(got, seg.frame.samples[seg.start : seg.stop, 0])
            assert seg.token == f"m{int(seg.token[1:])}"
    covered = sum(seg.count for b in batches for seg in b.segments)
    assert covered == sum(counts)


def test_a_full_batch_is_handed_out_without_waiting() -> None:
    async def go() -> tuple[int, float]:
        b: Batcher[str] = Batcher(8, max_wait_s=5.0)
        b.put(frame("d", 0, 5), "a")
        b.put(frame("d", 5, 5), "b")
        t0 = time.monotonic()
        batch = await b.get()
        assert batch is not None
        return batch.size, time.monotonic() - t0

    size, waited = asyncio.run(go())
    assert size == 8
    assert waited < 1.0


def test_a_partial_batch_goes_after_max_wait() -> None:
    async def go() -> tuple[int, float]:
        b: Batcher[str] = Batcher(64, max_wait_s=0.05)
        t0 = time.monotonic()
        b.put(frame("d", 0, 3), "a")
        batch = await b.get()
        assert batch is not None
        return batch.size, time.monotonic() - t0

    size, waited = asyncio.run(go())
    assert size == 3
    assert waited >= 0.045


def test_windows_arriving_while_waiting_join_the_batch() -> None:
    async def go() -> int:
        b: Batcher[str] = Batcher(64, max_wait_s=0.2)
        b.put(frame("d", 0, 1), "a")

        async def later() -> None:
            await asyncio.sleep(0.02)
            b.put(frame("d", 1, 63), "b")

        task = asyncio.create_task(later())
        batch = await b.get()
        await task
        assert batch is not None
        return batch.size

    assert asyncio.run(go()) == 64


def test_close_flushes_then_ends() -> None:
    b: Batcher[str] = Batcher(4, max_wait_s=10.0)
    b.put(frame("d", 0, 6), "a")
    sizes = [x.size for x in drain(b)]
    assert sizes == [4, 2]
    assert b.queued == 0
