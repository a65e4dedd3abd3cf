"""Fuzzing the wire decoder: any bytes either decode to a valid Frame or raise PayloadError.

About 11,800 generated payloads in all; each decode must finish within the hypothesis deadline.
"""

from __future__ import annotations

import json
import math
import struct
from datetime import timedelta
from typing import Any, get_args

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.errors import PayloadError, RejectCode
from monitor.wire import (
    HEADER,
    MAGIC,
    MAX_ABS_SAMPLE,
    U64_MAX,
    Frame,
    decode,
    encode_binary,
    encode_json,
)

L = 4  # a short window makes valid frames likely after mutation
MAX_WINDOWS = 64
MAX_BYTES = 1 << 20
CODES = set(get_args(RejectCode))

fuzz = settings(
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def check(payload: bytes, window_length: int = L) -> Frame | str:
    """Decode; a Frame must be fully valid, anything else must be a PayloadError with a code."""
    try:
        frame = decode(
            payload,
            "dev.1",
            window_length=window_length,
            max_bytes=MAX_BYTES,
            max_windows=MAX_WINDOWS,
            max_abs=MAX_ABS_SAMPLE,
        )
    except PayloadError as e:
        assert e.code in CODES, e.code
        assert isinstance(e.reason, str) and e.reason
        return e.code
    s = frame.samples
    assert s.dtype == np.float32 and s.ndim == 2 and s.flags.c_contiguous
    assert not s.flags.writeable
    assert s.shape[1] == window_length and 1 <= s.shape[0] <= MAX_WINDOWS
    assert np.isfinite(s).all() and np.abs(s).max() <= MAX_ABS_SAMPLE
    assert math.isfinite(frame.window_ts(frame.count - 1))
    assert type(frame.seq) is int and frame.seq >= 0 and frame.seq + frame.count - 1 <= U64_MAX
    assert math.isfinite(frame.ts)
    assert frame.fs is None or (math.isfinite(frame.fs) and frame.fs > 0)
    assert frame.device_id == "dev.1"
    return frame


# ---- valid payloads to start from ---------------------------------------------------------

samples_f32 = st.floats(-MAX_ABS_SAMPLE, MAX_ABS_SAMPLE, width=32)


@st.composite
def valid_payloads(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(1, 4))
    values = draw(st.lists(samples_f32, min_size=count * L, max_size=count * L))
    samples = np.array(values, np.float32).reshape(count, L)
    if count == 1 and draw(st.booleans()):
        samples = samples[0]
    seq = draw(st.integers(0, U64_MAX - 4))
    ts = draw(st.floats(-1e12, 1e12))
    if draw(st.booleans()):
        return encode_binary(seq, ts, samples, draw(st.sampled_from([0.0, 140.0, 250.0])))
    return encode_json(seq, ts, samples, draw(st.sampled_from([None, 140.0])))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_payloads()))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "dup"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, ord("["), ord('"'), ord("N")]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "dup":
            data[i:i] = data[i : i + draw(st.integers(1, 64))]
    return bytes(data)


@given(st.binary(max_size=512))
@settings(fuzz, max_examples=2500)
def test_random_bytes(payload: bytes) -> None:
    check(payload)


@given(st.binary(max_size=64).map(lambda b: MAGIC + b))
@settings(fuzz, max_examples=1000)
def test_random_bytes_after_magic(payload: bytes) -> None:
    check(payload)


@given(mutated())
@settings(fuzz, max_examples=2500)
def test_mutated_valid_payloads(payload: bytes) -> None:
    check(payload)


@given(valid_payloads(), st.data())
@settings(fuzz, max_examples=1000)
def test_truncated_payloads(payload: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(payload) - 1))
    assert isinstance(check(payload[:cut]), str)  # every proper prefix is invalid


@given(valid_payloads())
@settings(fuzz, max_examples=300)
def test_valid_payloads_decode(payload: bytes) -> None:
    assert isinstance(check(payload), Frame)


@st.composite
def arbitrary_frames(draw: st.DrawFn) -> bytes:
    """Huge counts and lengths in the header, any version/seq/ts/fs, any body size."""
    header = HEADER.pack(
        MAGIC,
        draw(st.integers(0, 0xFFFF) | st.just(1)),
        draw(st.integers(0, 0xFFFF) | st.integers(0, 3)),
        draw(st.integers(0, 2**32 - 1) | st.integers(0, 8)),
        draw(st.integers(0, U64_MAX)),
        draw(st.floats(width=64)),
        draw(st.floats(width=32)),
    )
    return header + draw(st.binary(max_size=256) | st.integers(0, 4096).map(bytes))


@given(arbitrary_frames())
@settings(fuzz, max_examples=1500)
def test_arbitrary_headers(payload: bytes) -> None:
    check(payload)


@given(count=st.integers(1, 3), length=st.integers(0, 8), ts=st.floats(), fs=st.floats(width=32))
@settings(fuzz, max_examples=500)
def test_consistent_headers_with_raw_floats(count: int, length: int, ts: float, fs: float) -> None:
    """Frames whose size matches the header, carrying any float bit patterns."""
    body = np.random.default_rng(count * 31 + length).bytes(4 * count * length)
    check(HEADER.pack(MAGIC, 1, count, length, 0, ts, fs) + body, window_length=max(length, 1))


# ---- JSON ---------------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)
number_lists = st.lists(st.floats() | st.integers(-(2**70), 2**70), min_size=0, max_size=2 * L)
field_values = json_values | number_lists | st.lists(number_lists, max_size=4)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "seq": field_values | st.integers(-2, U64_MAX + 2),
            "ts": field_values,
            "fs": field_values,
            "samples": field_values,
            "windows": field_values,
            "extra": json_values,
        },
    )
)
@settings(fuzz, max_examples=2000)
def test_json_wrong_types(obj: dict[str, Any]) -> None:
    check(json.dumps(obj).encode())


@given(json_values)
@settings(fuzz, max_examples=500)
def test_json_any_value(value: Any) -> None:
    check(json.dumps(value).encode())


@given(
    depth=st.integers(1, 300_000),
    opener=st.sampled_from([b"[", b'{"a":', b'{"seq": 0, "ts": 0, "samples": [']),
    closed=st.booleans(),
)
@example(depth=300_000, opener=b"[", closed=True)
@example(depth=200_000, opener=b'{"a":', closed=False)
@settings(fuzz, max_examples=150)
def test_deep_nesting(depth: int, opener: bytes, closed: bool) -> None:
    closer = {b"[": b"]", b'{"a":': b"}"}.get(opener, b"]")
    payload = opener * depth + b"0" + (closer * depth if closed else b"")
    check(payload[: MAX_BYTES + 16])


@given(
    st.binary(min_size=1, max_size=64).filter(lambda b: not _utf8(b)),
    st.sampled_from([b"", b"{", b'{"seq": 0, "ts": 0, "samples": ["']),
)
@settings(fuzz, max_examples=300)
def test_non_utf8(junk: bytes, prefix: bytes) -> None:
    assert check(prefix + junk) == "bad_json"


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@given(
    number=st.sampled_from(["1e309", "-1e309", "1e39", "3.5e38", "1e-400", "-0", "0e0"])
    | st.integers(1, 6000).map(lambda n: "9" * n)
    | st.integers(1, 400).map(lambda n: "1e" + str(n))
    | st.integers(1, 400).map(lambda n: "0." + "0" * n + "1"),
    where=st.sampled_from(["seq", "ts", "fs", "sample"]),
)
@settings(fuzz, max_examples=300)
def test_huge_numbers(number: str, where: str) -> None:
    fields = {"seq": "0", "ts": "0", "fs": "null", "sample": "0"}
    fields[where] = number
    samples = ", ".join([fields["sample"]] * L)
    head = f'"seq": {fields["seq"]}, "ts": {fields["ts"]}, "fs": {fields["fs"]}'
    check(f'{{{head}, "samples": [{samples}]}}'.encode())


@given(st.integers(0, 4000), st.booleans())
@settings(fuzz, max_examples=60)
def test_many_windows_near_limits(count: int, binary: bool) -> None:
    """Window counts around max_windows and payloads around max_bytes."""
    samples = np.zeros((max(count, 1), L), np.float32)
    payload = encode_binary(0, 0.0, samples) if binary else encode_json(0, 0.0, samples)
    result = check(payload)
    if count > MAX_WINDOWS:
        assert result == "too_large"


@given(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.integers(0, L - 1),
    st.booleans(),
)
@settings(fuzz, max_examples=500)
def test_any_float32_sample_beyond_the_bound_is_out_of_range(
    value: float, where: int, binary: bool
) -> None:
    """Float extremes (+-3.4e38, 1e30, ...) never reach the model; anything within does."""
    x = np.zeros((2, L), np.float32)
    x[1, where] = value
    payload = encode_binary(0, 0.0, x) if binary else encode_json(0, 0.0, x)
    result = check(payload)
    if abs(value) > MAX_ABS_SAMPLE:
        assert result == "out_of_range"
    else:
        assert isinstance(result, Frame)


@given(st.floats(width=32, min_value=0.0, exclude_min=True), st.integers(2, 8))
@settings(fuzz, max_examples=300)
def test_window_times_never_overflow(fs: float, count: int) -> None:
    """A tiny fs would put later windows at an infinite time (an alert that cannot be JSON)."""
    result = check(encode_binary(0, 1e9, np.zeros((count, L), np.float32), fs))
    if isinstance(result, Frame):
        assert all(math.isfinite(result.window_ts(i)) for i in range(count))
    else:
        assert result == "bad_field"


def test_struct_header_is_what_the_fuzzers_assume() -> None:
    assert HEADER.size == 32 and struct.calcsize("<4sHHIQdf") == 32
