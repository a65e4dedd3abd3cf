"""Micro-batching: windows from many messages into batches of up to `max_batch`, or whatever
has arrived `max_wait_ms` after the oldest waiting window, whichever comes first.

A message's windows may be split across batches; each batch says which slice of which
message it holds (`Segment`) so results find their way back.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np

T = TypeVar("T")


class Rows(Protocol):
    """What the batcher batches: `count` rows of model input (a window Frame, a set of beats)."""

    @property
    def count(self) -> int: ...

    @property
    def samples(self) -> np.ndarray:  # float32 [count, L]
        ...

    @property
    def context(self) -> np.ndarray | None:  # float32 [count, k] for models with `context`
        ...


@dataclass(frozen=True, slots=True)
class Segment(Generic[T]):
    """Rows [start, stop) of one put, at batch rows [offset, offset + stop - start)."""

    frame: Rows
    start: int
    stop: int
    offset: int
    token: T  # the caller's bookkeeping for the message

    @property
    def count(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, slots=True)
class Batch(Generic[T]):
    windows: np.ndarray  # float32 [n, L], C-contiguous
    segments: tuple[Segment[T], ...]
    context: np.ndarray | None = None  # float32 [n, k] when the rows carry context

    @property
    def size(self) -> int:
        return int(self.windows.shape[0])


class Batcher(Generic[T]):
    """Collects frames (put, never blocks) and hands out batches (await get).

    `queued` counts waiting windows; the caller bounds it (backpressure) and `close()` makes
    `get` flush what is left without waiting, then return None.
    """

    def __init__(self, max_batch: int, max_wait_s: float) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch >= 1 and max_wait_s >= 0")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._items: deque[tuple[Rows, int, T, float]] = deque()  # frame, next row, token, t
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._closed = False

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, frame: Rows, token: T) -> None:
        was_empty = self._queued == 0
        self._items.append((frame, 0, token, time.monotonic()))
        self._queued += frame.count
        if was_empty or self._queued >= self.max_batch:
            self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    async def get(self) -> Batch[T] | None:
        """The next batch; None once closed and empty."""
        while self._queued == 0:
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._items[0][3] + self.max_wait_s
        while self._queued < self.max_batch and not self._closed:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                break
        return self._take()

    def _take(self) -> Batch[T]:
        segments: list[Segment[T]] = []
        parts: list[np.ndarray] = []
        contexts: list[np.ndarray] = []
        n = 0
        while self._items and n < self.max_batch:
            frame, start, token, t = self._items[0]
            k = min(frame.count - start, self.max_batch - n)
            stop = start + k
            if stop < frame.count:  # split: the rest stays at the head
                self._items[0] = (frame, stop, token, t)
            else:
                self._items.popleft()
            segments.append(Segment(frame, start, stop, n, token))
            parts.append(frame.samples[start:stop])
            ctx = frame.context
            if ctx is not None:
                contexts.append(ctx[start:stop])
            n += k
        self._queued -= n
        windows = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if contexts and len(contexts) != len(parts):
            raise ValueError("rows with and without context in one batch")
        context = None
        if contexts:
            context = contexts[0] if len(contexts) == 1 else np.concatenate(contexts)
        return Batch(windows, tuple(segments), context)
