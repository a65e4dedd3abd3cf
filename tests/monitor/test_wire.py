"""The wire codec: round trips for both encodings and every reject code."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from monitor.errors import PayloadError
from monitor.wire import (
    HEADER,
    MAGIC,
    VERSION,
    Frame,
    decode,
    encode_binary,
    encode_json,
    parse_topic,
)

L = 140
finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
seqs = st.integers(0, 2**63)
tss = st.floats(-1e12, 1e12, allow_nan=False)
fss = st.none() | st.floats(1.0, 10_000.0, width=32)


def windows_strategy(length: int = L) -> st.SearchStrategy[np.ndarray]:
    shape = st.tuples(st.integers(1, 8), st.just(length))
    return arrays(np.float32, shape, elements=finite_f32)


def rejects(code: str, payload: bytes, **limits: int) -> None:
    with pytest.raises(PayloadError) as info:
        decode(payload, "d1", window_length=L, **limits)
    assert info.value.code == code, info.value.reason
    assert info.value.reason


def check_frame(frame: Frame, seq: int, ts: float, fs: float | None, samples: np.ndarray) -> None:
    assert frame.device_id == "d1"
    assert frame.seq == seq
    assert frame.ts == ts
    assert frame.fs == fs
    assert frame.samples.dtype == np.float32
    assert frame.samples.flags.c_contiguous
    assert not frame.samples.flags.writeable
    assert frame.count == samples.shape[0]
    np.testing.assert_array_equal(frame.samples, samples)


@settings(max_examples=150, deadline=None)
@given(windows_strategy(), seqs, tss, fss)
def test_json_round_trip_multi(samples: np.ndarray, seq: int, ts: float, fs: float | None) -> None:
    frame = decode(encode_json(seq, ts, samples, fs), "d1", window_length=L)
    check_frame(frame, seq, ts, fs, samples)


@settings(max_examples=100, deadline=None)
@given(arrays(np.float32, (L,), elements=finite_f32), seqs, tss, fss)
def test_json_round_trip_single(samples: np.ndarray, seq: int, ts: float, fs: float | None) -> None:
    payload = encode_json(seq, ts, samples, fs)
    assert "samples" in json.loads(payload)
    frame = decode(payload, "d1", window_length=L)
    check_frame(frame, seq, ts, fs, samples[None, :])


@settings(max_examples=150, deadline=None)
@given(windows_strategy(), seqs, tss, fss)
def test_binary_round_trip_multi(
    samples: np.ndarray, seq: int, ts: float, fs: float | None
) -> None:
    payload = encode_binary(seq, ts, samples, fs or 0.0)
    assert len(payload) == 32 + 4 * samples.size
    frame = decode(payload, "d1", window_length=L)
    check_frame(frame, seq, ts, fs, samples)


@settings(max_examples=100, deadline=None)
@given(arrays(np.float32, (L,), elements=finite_f32), seqs, tss)
def test_binary_round_trip_single(samples: np.ndarray, seq: int, ts: float) -> None:
    frame = decode(encode_binary(seq, ts, samples), "d1", window_length=L)
    check_frame(frame, seq, ts, None, samples[None, :])


def test_binary_layout_matches_design() -> None:
    """The frame is the little-endian layout in DESIGN.md, byte for byte."""
    samples = np.arange(6, dtype=np.float32).reshape(2, 3)
    payload = encode_binary(17, 1764337200.25, samples, 140.0)
    assert HEADER.size == 32
    assert payload[:4] == b"ECGW"
    assert struct.unpack_from("<HHIQdf", payload, 4) == (1, 2, 3, 17, 1764337200.25, 140.0)
    assert np.frombuffer(payload[32:], "<f4").tolist() == [0, 1, 2, 3, 4, 5]


def test_frame_windows_have_consecutive_seqs_and_times() -> None:
    samples = np.zeros((3, L), np.float32)
    frame = decode(encode_binary(10, 100.0, samples, 140.0), "dev-1", window_length=L)
    ws = frame.windows()
    assert [w.seq for w in ws] == [10, 11, 12]
    assert [w.ts for w in ws] == [100.0, 101.0, 102.0]
    assert all(w.device_id == "dev-1" and w.samples.shape == (L,) for w in ws)
    unknown = decode(encode_json(0, 5.0, samples), "d1", window_length=L)
    assert unknown.fs is None and unknown.window_ts(2) == 5.0
    with pytest.raises(IndexError):
        frame.window(3)


def test_samples_are_read_only_and_shared_nothing_with_callers() -> None:
    frame = decode(encode_binary(0, 0.0, np.ones(L, np.float32)), "d1", window_length=L)
    with pytest.raises(ValueError):
        frame.samples[0, 0] = 2.0
    writable = np.ones((1, L), np.float32)
    built = Frame("d1", 0, 0.0, None, writable)
    assert not built.samples.flags.writeable


def test_fs_null_and_absent_mean_unknown() -> None:
    for fs_part in ('"fs": null, ', ""):
        payload = f'{{"seq": 1, "ts": 2, {fs_part}"samples": {[0] * L}}}'.encode()
        frame = decode(payload, "d1", window_length=L)
        assert frame.fs is None and frame.ts == 2.0


def test_integers_in_samples_are_numbers() -> None:
    payload = json.dumps({"seq": 0, "ts": 0, "windows": [list(range(L))]}).encode()
    assert decode(payload, "d1", window_length=L).samples[0, 139] == 139.0


def test_booleans_elsewhere_do_not_break_the_fast_path() -> None:
    payload = json.dumps({"seq": 0, "ts": 0, "extra": True, "samples": [0.5] * L}).encode()
    assert decode(payload, "d1", window_length=L).samples[0, 0] == 0.5


# ---- topics --------------------------------------------------------------------------


def test_parse_topic() -> None:
    assert parse_topic("ecg/d1/window", "ecg") == "d1"
    assert parse_topic("site/a/ecg/Dev_1.x-y/window", "site/a/ecg") == "Dev_1.x-y"
    assert parse_topic(f"ecg/{'a' * 64}/window", "ecg") == "a" * 64


@pytest.mark.parametrize(
    "topic",
    [
        "ecg//window",
        "ecg/d 1/window",
        "ecg/d1/x/window",
        "ecg/d1/alert",
        "other/d1/window",
        f"ecg/{'a' * 65}/window",
        "ecg/d1\n/window",
        "ecg/dé/window",
        "ecg/window",
    ],
)
def test_parse_topic_rejects(topic: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_topic(topic, "ecg")
    assert info.value.code == "bad_device_id"


# ---- every reject code ------------------------------------------------------------------

ZEROS = [0.0] * L


def js(obj: object) -> bytes:
    return json.dumps(obj).encode()


def frame_bytes(
    count: int = 1,
    length: int = L,
    *,
    version: int = VERSION,
    seq: int = 0,
    ts: float = 0.0,
    fs: float = 0.0,
    body: bytes | None = None,
) -> bytes:
    header = HEADER.pack(MAGIC, version, count, length, seq, ts, fs)
    return header + (body if body is not None else bytes(4 * count * length))


def test_too_large_is_checked_before_parsing() -> None:
    rejects("too_large", b"{" * 2000, max_bytes=1000)
    rejects("too_large", b"x" * 1001, max_bytes=1000)
    ok = encode_json(0, 0.0, np.zeros(L, np.float32))
    assert decode(ok, "d1", window_length=L, max_bytes=len(ok)).count == 1


def test_too_large_window_counts() -> None:
    rejects("too_large", frame_bytes(count=5), max_windows=4)
    rejects("too_large", frame_bytes(count=65535, body=b""), max_windows=4096)
    rejects("too_large", js({"seq": 0, "ts": 0, "windows": [ZEROS] * 5}), max_windows=4)


@pytest.mark.parametrize("device", ["", "d/1", "d 1", "a" * 65, "d1\n", "#", "+"])
def test_bad_device_id(device: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode(encode_json(0, 0.0, np.zeros(L, np.float32)), device, window_length=L)
    assert info.value.code == "bad_device_id"


@pytest.mark.parametrize(
    "payload",
    [
        b"ECGW",
        MAGIC + bytes(27),
        frame_bytes(version=2),
        frame_bytes(version=0),
        frame_bytes(count=0, body=b""),
        frame_bytes()[:-1],
        frame_bytes() + b"\0",
        frame_bytes(count=2, body=bytes(4 * L)),
        frame_bytes(length=2**32 - 1, body=b""),
    ],
    ids=[
        "magic-only",
        "short-header",
        "version-2",
        "version-0",
        "count-0",
        "truncated",
        "trailing-byte",
        "count-lies",
        "huge-length",
    ],
)
def test_bad_frame(payload: bytes) -> None:
    rejects("bad_frame", payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe{}",
        b"ECG",
        b"{",
        b'{"seq": 1,}',
        b"[1, 2]",
        b'"text"',
        b"17",
        b"null",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"seq": 1' + b"0" * 5000 + b', "ts": 0, "samples": []}',
        "\ufeff{}".encode(),
    ],
    ids=[
        "empty",
        "not-utf8",
        "magic-prefix",
        "unterminated",
        "trailing-comma",
        "array",
        "string",
        "number",
        "null",
        "deep-list",
        "deep-object",
        "int-beyond-digit-limit",
        "bom",
    ],
)
def test_bad_json(payload: bytes) -> None:
    rejects("bad_json", payload)


@pytest.mark.parametrize(
    "obj",
    [
        {"ts": 0, "samples": ZEROS},
        {"seq": -1, "ts": 0, "samples": ZEROS},
        {"seq": 2**64, "ts": 0, "samples": ZEROS},
        {"seq": 1.0, "ts": 0, "samples": ZEROS},
        {"seq": True, "ts": 0, "samples": ZEROS},
        {"seq": "1", "ts": 0, "samples": ZEROS},
        {"seq": None, "ts": 0, "samples": ZEROS},
        {"seq": 0, "samples": ZEROS},
        {"seq": 0, "ts": "now", "samples": ZEROS},
        {"seq": 0, "ts": True, "samples": ZEROS},
        {"seq": 0, "ts": 10**400, "samples": ZEROS},
        {"seq": 0, "ts": 0, "fs": 0, "samples": ZEROS},
        {"seq": 0, "ts": 0, "fs": -140.0, "samples": ZEROS},
        {"seq": 0, "ts": 0, "fs": "140", "samples": ZEROS},
        {"seq": 0, "ts": 0, "fs": False, "samples": ZEROS},
        {"seq": 0, "ts": 0},
        {"seq": 0, "ts": 0, "samples": ZEROS, "windows": [ZEROS]},
        {"seq": 0, "ts": 0, "samples": "0,0"},
        {"seq": 0, "ts": 0, "samples": [ZEROS]},
        {"seq": 0, "ts": 0, "samples": {"0": 1}},
        {"seq": 0, "ts": 0, "samples": [*ZEROS[:-1], "0.5"]},
        {"seq": 0, "ts": 0, "samples": [*ZEROS[:-1], None]},
        {"seq": 0, "ts": 0, "samples": [*ZEROS[:-1], True]},
        {"seq": 0, "ts": 0, "samples": [True] * L},
        {"seq": 0, "ts": 0, "samples": [*ZEROS[:-1], [0.0]]},
        {"seq": 0, "ts": 0, "samples": [*ZEROS[:-1], {}]},
        {"seq": 0, "ts": 0, "windows": []},
        {"seq": 0, "ts": 0, "windows": ZEROS},
        {"seq": 0, "ts": 0, "windows": [ZEROS, None]},
        {"seq": 0, "ts": 0, "windows": [ZEROS, "x"]},
        {"seq": 0, "ts": 0, "windows": [[[0.0] * L]]},
        {"seq": 0, "ts": 0, "windows": {"0": ZEROS}},
        {"seq": 2**64 - 1, "ts": 0, "windows": [ZEROS, ZEROS]},
    ],
)
def test_bad_field_json(obj: object) -> None:
    rejects("bad_field", js(obj))


def test_nan_ts_is_bad_field() -> None:
    rejects("bad_field", b'{"seq": 0, "ts": NaN, "samples": []}')
    rejects("bad_field", b'{"seq": 0, "ts": Infinity, "samples": []}')
    rejects("bad_field", b'{"seq": 0, "ts": 1e999, "samples": []}')


@pytest.mark.parametrize(
    "payload",
    [
        frame_bytes(seq=2**64 - 1, count=2),
        frame_bytes(ts=math.nan),
        frame_bytes(ts=math.inf),
        frame_bytes(fs=-1.0),
        frame_bytes(fs=math.nan),
        frame_bytes(fs=math.inf),
    ],
    ids=["seq-overflow", "ts-nan", "ts-inf", "fs-negative", "fs-nan", "fs-inf"],
)
def test_bad_field_binary(payload: bytes) -> None:
    rejects("bad_field", payload)


def test_last_u64_seq_is_fine() -> None:
    assert decode(frame_bytes(seq=2**64 - 1), "d1", window_length=L).seq == 2**64 - 1
    assert decode(js({"seq": 2**64 - 1, "ts": 0, "samples": ZEROS}), "d1", window_length=L).seq


@pytest.mark.parametrize(
    "payload",
    [
        frame_bytes(length=L - 1),
        frame_bytes(count=3, length=L + 1),
        frame_bytes(count=1, length=0, body=b""),
        js({"seq": 0, "ts": 0, "samples": ZEROS[:-1]}),
        js({"seq": 0, "ts": 0, "samples": []}),
        js({"seq": 0, "ts": 0, "windows": [ZEROS, ZEROS[:-1]]}),
        js({"seq": 0, "ts": 0, "windows": [[*ZEROS, 1.0], [*ZEROS, 1.0]]}),
        js({"seq": 0, "ts": 0, "windows": [[]]}),
    ],
)
def test_bad_length(payload: bytes) -> None:
    rejects("bad_length", payload)


def nan_frame(value: float, count: int = 2) -> bytes:
    samples = np.zeros((count, L), np.float32)
    samples[-1, 7] = value
    return encode_binary(0, 0.0, samples)


@pytest.mark.parametrize(
    "payload",
    [
        nan_frame(math.nan),
        nan_frame(math.inf),
        nan_frame(-math.inf, count=1),
        b'{"seq": 0, "ts": 0, "samples": [NaN' + b", 0" * (L - 1) + b"]}",
        b'{"seq": 0, "ts": 0, "samples": [-Infinity' + b", 0" * (L - 1) + b"]}",
        b'{"seq": 0, "ts": 0, "samples": [1e999' + b", 0" * (L - 1) + b"]}",
        js({"seq": 0, "ts": 0, "samples": [1e39, *ZEROS[1:]]}),
        js({"seq": 0, "ts": 0, "samples": [-(10**39), *ZEROS[1:]]}),
        js({"seq": 0, "ts": 0, "samples": [10**400, *ZEROS[1:]]}),
        js({"seq": 0, "ts": 0, "windows": [ZEROS, [*ZEROS[1:], 3.5e38]]}),
    ],
    ids=[
        "bin-nan",
        "bin-inf",
        "bin-neg-inf",
        "json-NaN",
        "json-Infinity",
        "json-1e999",
        "json-f32-overflow",
        "json-int-f32-overflow",
        "json-int-f64-overflow",
        "json-multi-overflow",
    ],
)
def test_non_finite(payload: bytes) -> None:
    rejects("non_finite", payload)


def test_largest_float32_is_finite() -> None:
    big = float(np.finfo(np.float32).max)
    frame = decode(js({"seq": 0, "ts": 0, "samples": [big, *ZEROS[1:]]}), "d1", window_length=L)
    assert frame.samples[0, 0] == np.finfo(np.float32).max


def test_accepts_bytearray_and_memoryview() -> None:
    payload = encode_binary(3, 1.0, np.ones((2, L), np.float32))
    for buf in (bytearray(payload), memoryview(payload)):
        frame = decode(buf, "d1", window_length=L)  # type: ignore[arg-type]
        assert frame.seq == 3 and not frame.samples.flags.writeable


def test_encoders_reject_bad_shapes() -> None:
    with pytest.raises(ValueError):
        encode_json(0, 0.0, np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError):
        encode_binary(0, 0.0, np.zeros((0, L), np.float32))
    with pytest.raises(ValueError):
        encode_binary(-1, 0.0, np.zeros(L, np.float32))
