"""The stream codec (JSON and ECGS frames): round trips, every reject code, and property tests
that any bytes either decode to a valid Chunk or raise PayloadError with a DESIGN.md code."""

from __future__ import annotations

import json
import math
import struct
from datetime import timedelta
from typing import get_args

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.errors import PayloadError, RejectCode
from monitor.stream_wire import (
    HEADER,
    MAGIC,
    Chunk,
    decode_stream,
    encode_stream_binary,
    encode_stream_json,
    parse_stream_topic,
)
from monitor.wire import U64_MAX

CODES = set(get_args(RejectCode))
prop = settings(
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    max_examples=300,
)
f32 = st.floats(-50, 50, width=32, allow_nan=False)
samples_st = st.lists(f32, min_size=1, max_size=400).map(lambda v: np.array(v, np.float32))


def code_of(payload: bytes, **kw: float) -> str:
    with pytest.raises(PayloadError) as e:
        decode_stream(payload, "d1", **kw)  # type: ignore[arg-type]
    assert e.value.code in CODES
    return e.value.code


def test_header_is_36_bytes_as_in_design() -> None:
    assert HEADER.size == 36


@given(
    samples_st, st.integers(0, U64_MAX - 1000), st.floats(0, 2e9), st.sampled_from([125.0, 360.0])
)
@prop
def test_f32_frame_and_json_round_trip_exactly(
    x: np.ndarray, start: int, ts: float, fs: float
) -> None:
    for payload in (encode_stream_binary(start, ts, fs, x), encode_stream_json(start, ts, fs, x)):
        c = decode_stream(payload, "d1")
        assert (c.start, c.ts, c.fs, c.n, c.end) == (start, ts, fs, x.size, start + x.size)
        np.testing.assert_array_equal(c.samples_mv, x)
        assert not c.samples_mv.flags.writeable


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=300), st.floats(1.0, 2000.0))
@prop
def test_i16_frame_decodes_to_units_over_gain(units: list[int], gain: float) -> None:
    raw = np.array(units, np.int16)
    c = decode_stream(encode_stream_binary(7, 1.0, 360.0, raw, fmt="i16", gain=gain), "d1")
    expected = (raw.astype(np.float32) / np.float32(gain)).astype(np.float32)
    np.testing.assert_array_equal(c.samples_mv, expected)


def test_i16_from_millivolts_quantises_with_the_gain() -> None:
    x = np.array([0.0, 1.0, -0.5, 2.25], np.float32)
    c = decode_stream(encode_stream_binary(0, 0.0, 360.0, x, fmt="i16", gain=200.0), "d1")
    np.testing.assert_allclose(c.samples_mv, x, atol=1 / 400)


def frame(
    n: int = 4,
    *,
    fmt: int = 1,
    fs: float = 360.0,
    gain: float = 0.0,
    body: int | None = None,
    version: int = 1,
    start: int = 0,
    ts: float = 0.0,
) -> bytes:
    width = 4 if fmt == 1 else 2
    return HEADER.pack(MAGIC, version, fmt, n, start, ts, fs, gain) + b"\0" * (
        width * n if body is None else body
    )


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (frame()[:20], "bad_frame"),
        (frame(version=2), "bad_frame"),
        (frame(fmt=3), "bad_frame"),
        (frame(body=15), "bad_stream"),  # header lies about n
        (frame(n=0), "bad_stream"),
        (frame(fs=0.0), "bad_stream"),
        (frame(fs=float("nan")), "bad_stream"),
        (frame(fs=5000.0), "bad_stream"),
        (frame(n=360 * 61), "bad_stream"),  # over 60 s
        (frame(fmt=2, gain=0.0), "bad_stream"),
        (frame(fmt=1, gain=3.0), "bad_stream"),
        (frame(start=U64_MAX), "bad_field"),
        (frame(ts=float("inf")), "bad_field"),
        (
            HEADER.pack(MAGIC, 1, 1, 1, 0, 0.0, 360.0, 0.0) + struct.pack("<f", math.inf),
            "non_finite",
        ),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b'{"start": -1, "ts": 0, "fs": 360, "samples": [1]}', "bad_field"),
        (b'{"start": 0, "ts": "x", "fs": 360, "samples": [1]}', "bad_field"),
        (b'{"start": 0, "ts": 0, "samples": [1]}', "bad_field"),  # fs is required
        (b'{"start": 0, "ts": 0, "fs": 10, "samples": [1]}', "bad_stream"),
        (b'{"start": 0, "ts": 0, "fs": 360, "samples": []}', "bad_stream"),
        (b'{"start": 0, "ts": 0, "fs": 360, "samples": [1, true]}', "bad_field"),
        (b'{"start": 0, "ts": 0, "fs": 360, "samples": [1, "a"]}', "bad_field"),
        (b'{"start": 0, "ts": 0, "fs": 360, "samples": [1, 1e39]}', "non_finite"),
    ],
)
def test_bad_chunks_get_their_reject_code(payload: bytes, code: str) -> None:
    assert code_of(payload) == code


def test_too_large_payload_and_bad_device_id() -> None:
    assert code_of(frame(n=100), max_bytes=100) == "too_large"
    with pytest.raises(PayloadError) as e:
        decode_stream(frame(), "bad id")
    assert e.value.code == "bad_device_id"


def test_topic_parsing() -> None:
    assert parse_stream_topic("ecg/dev.1/stream", "ecg") == "dev.1"
    for topic in ("ecg/dev.1/window", "ecg//stream", "x/d/stream", "ecg/a/b/stream"):
        with pytest.raises(PayloadError):
            parse_stream_topic(topic, "ecg")


def check(payload: bytes) -> Chunk | str:
    try:
        c = decode_stream(payload, "d1", max_bytes=1 << 16, max_chunk_s=2.0)
    except PayloadError as e:
        assert e.code in CODES
        return e.code
    assert c.n >= 1 and c.samples_mv.dtype == np.float32 and np.isfinite(c.samples_mv).all()
    assert 100.0 <= c.fs <= 1000.0 and c.n <= 2.0 * c.fs and math.isfinite(c.ts)
    return c


@given(st.binary(max_size=300))
@prop
def test_any_bytes_decode_or_reject(payload: bytes) -> None:
    check(payload)
    check(MAGIC + payload)


@given(samples_st, st.data())
@prop
def test_mutated_frames_decode_or_reject(x: np.ndarray, data: st.DataObject) -> None:
    buf = bytearray(encode_stream_binary(5, 1.0, 360.0, x))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    check(bytes(buf))


@given(
    st.dictionaries(
        st.sampled_from(["start", "ts", "fs", "samples", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-5, 2**65),
            st.floats(),
            st.text(max_size=3),
            st.lists(st.one_of(st.floats(), st.integers(-9, 9)), max_size=5),
        ),
    )
)
@prop
def test_json_objects_decode_or_reject(obj: dict[str, object]) -> None:
    check(json.dumps(obj).encode())
