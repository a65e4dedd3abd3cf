"""Payload codecs for continuous ECG chunks (JSON and the ECGS binary frame), shared with the
simulator.

`decode_stream` turns any bytes into a validated `Chunk` or raises `PayloadError` with a reject
code from DESIGN.md (`bad_stream` for a header that lies, an fs out of range or a chunk over the
size limit); it never raises anything else.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from monitor.errors import PayloadError
from monitor.wire import U64_MAX, check_device_id, parse_topic

MAGIC = b"ECGS"
VERSION = 1
FORMAT_F32 = 1  # float32 millivolts
FORMAT_I16 = 2  # int16 ADC units, mV = value / gain
# magic, version u16, format u16, n u32, start u64, ts f64, fs f32, gain f32: 36 bytes, LE.
HEADER = struct.Struct("<4sHHIQdff")
_F32_LE = np.dtype("<f4")
_I16_LE = np.dtype("<i2")
SampleFormat = Literal["f32", "i16"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One decoded stream message: `n` consecutive samples of one device's lead, in mV."""

    device_id: str
    start: int  # index of samples_mv[0] in the device's stream
    ts: float  # device time of sample `start`
    fs: float
    samples_mv: np.ndarray  # float32 [n], read-only

    def __post_init__(self) -> None:
        s = self.samples_mv
        if s.dtype != np.float32 or s.ndim != 1 or s.size == 0:
            raise ValueError(f"Chunk.samples_mv must be non-empty f32 [n], not {s.dtype} {s.shape}")
        if s.flags.writeable:
            view = s.view()
            view.flags.writeable = False
            object.__setattr__(self, "samples_mv", view)

    @property
    def n(self) -> int:
        return int(self.samples_mv.shape[0])

    @property
    def end(self) -> int:
        """Index one past the chunk's last sample (the next chunk normally starts here)."""
        return self.start + self.n

    def sample_ts(self, index: int) -> float:
        """Device time of sample `index` of this device's stream (at this chunk's fs)."""
        return self.ts + (index - self.start) / self.fs


def parse_stream_topic(topic: str, prefix: str) -> str:
    """`<prefix>/<device_id>/stream` -> device_id; PayloadError("bad_device_id") otherwise."""
    return parse_topic(topic, prefix, "stream")


def decode_stream(
    payload: bytes,
    device_id: str,
    *,
    max_bytes: int = 1 << 20,
    max_chunk_s: float = 60.0,
    min_fs: float = 100.0,
    max_fs: float = 1000.0,
) -> Chunk:
    """Decode and validate one chunk; raises PayloadError with the reject code."""
    if len(payload) > max_bytes:
        raise PayloadError("too_large", f"{len(payload)} bytes > limit {max_bytes}")
    check_device_id(device_id)
    if not isinstance(payload, bytes):
        payload = bytes(payload)
    limits = (max_chunk_s, min_fs, max_fs)
    if payload[:4] == MAGIC:
        return _decode_binary(payload, device_id, *limits)
    return _decode_json(payload, device_id, *limits)


def _check_fs_n(fs: float, n: int, max_chunk_s: float, min_fs: float, max_fs: float) -> None:
    if not (math.isfinite(fs) and min_fs <= fs <= max_fs):
        raise PayloadError("bad_stream", f"fs {fs} outside [{min_fs}, {max_fs}] Hz")
    if n == 0:
        raise PayloadError("bad_stream", "chunk has no samples")
    if n > max_chunk_s * fs:
        raise PayloadError(
            "bad_stream", f"{n} samples > {max_chunk_s:g} s at {fs:g} Hz (chunk size limit)"
        )


def _check_start_ts(start: int, n: int, ts: float) -> None:
    if start + n - 1 > U64_MAX:
        raise PayloadError("bad_field", "start + n - 1 overflows u64")
    if not math.isfinite(ts):
        raise PayloadError("bad_field", "ts is not finite")


def _decode_binary(
    payload: bytes, device_id: str, max_chunk_s: float, min_fs: float, max_fs: float
) -> Chunk:
    if len(payload) < HEADER.size:
        raise PayloadError(
            "bad_frame", f"stream frame of {len(payload)} bytes < {HEADER.size}-byte header"
        )
    _, version, fmt, n, start, ts, fs, gain = HEADER.unpack_from(payload)
    if version != VERSION:
        raise PayloadError("bad_frame", f"stream frame version {version}, expected {VERSION}")
    if fmt not in (FORMAT_F32, FORMAT_I16):
        raise PayloadError("bad_frame", f"stream format {fmt}, expected 1 (f32) or 2 (i16)")
    width = 4 if fmt == FORMAT_F32 else 2
    expected = HEADER.size + width * n
    if len(payload) != expected:
        raise PayloadError(
            "bad_stream", f"frame is {len(payload)} bytes, header says {expected} ({n} samples)"
        )
    _check_fs_n(float(fs), n, max_chunk_s, min_fs, max_fs)
    _check_start_ts(start, n, ts)
    if fmt == FORMAT_I16:
        if not (math.isfinite(gain) and gain > 0.0):
            raise PayloadError("bad_stream", f"gain {gain} must be a positive finite number")
        raw = np.frombuffer(payload, dtype=_I16_LE, offset=HEADER.size)
        samples = (raw.astype(np.float32) / np.float32(gain)).astype(np.float32)
    else:
        if gain != 0.0:
            raise PayloadError("bad_stream", f"gain {gain} with float32 samples (must be 0)")
        samples = np.frombuffer(payload, dtype=_F32_LE, offset=HEADER.size)
        if samples.dtype != np.float32:  # big-endian host
            samples = samples.astype(np.float32)
    if not np.isfinite(samples).all():
        raise PayloadError("non_finite", "samples contain NaN or Inf")
    return Chunk(device_id, start, ts, float(fs), samples)


def _number(v: object) -> float | None:
    if type(v) is not float and type(v) is not int:
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _decode_json(
    payload: bytes, device_id: str, max_chunk_s: float, min_fs: float, max_fs: float
) -> Chunk:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise PayloadError("bad_json", "payload is neither an ECGS frame nor UTF-8") from None
    except RecursionError:
        raise PayloadError("bad_json", "JSON nested too deeply") from None
    except ValueError as e:
        raise PayloadError("bad_json", f"unparsable JSON: {str(e)[:120]}") from None
    if not isinstance(obj, dict):
        raise PayloadError("bad_json", f"JSON payload is a {type(obj).__name__}, not an object")
    start = obj.get("start")
    if type(start) is not int or not 0 <= start <= U64_MAX:
        raise PayloadError("bad_field", "start must be a non-negative integer < 2**64")
    ts = _number(obj.get("ts"))
    if ts is None:
        raise PayloadError("bad_field", "ts must be a finite number")
    fs = _number(obj.get("fs"))
    if fs is None:
        raise PayloadError("bad_field", "fs must be a finite number (required for streams)")
    raw = obj.get("samples")
    if not isinstance(raw, list):
        raise PayloadError("bad_field", "samples must be a list of numbers")
    _check_fs_n(fs, len(raw), max_chunk_s, min_fs, max_fs)
    _check_start_ts(start, len(raw), ts)
    samples = _samples(raw, payload)
    if not np.isfinite(samples).all():
        raise PayloadError("non_finite", "samples contain NaN or Inf, or overflow float32")
    return Chunk(device_id, start, ts, fs, samples)


def _samples(raw: list[Any], payload: bytes) -> np.ndarray:
    fast = b"true" not in payload and b"false" not in payload  # numpy turns bools into numbers
    if fast:
        try:
            arr = np.asarray(raw)
        except (ValueError, TypeError, OverflowError, RecursionError):
            arr = None
        if arr is not None and arr.ndim == 1 and arr.dtype.kind in "fiu":
            with np.errstate(over="ignore", invalid="ignore"):
                return np.ascontiguousarray(arr, dtype=np.float32)
    for v in raw:
        if type(v) is not float and type(v) is not int:
            raise PayloadError("bad_field", f"samples hold a {type(v).__name__}, not a number")
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.array(raw, dtype=np.float64).astype(np.float32)
    except OverflowError:
        raise PayloadError("non_finite", "a sample overflows float32") from None


def encode_stream_json(start: int, ts: float, fs: float, samples_mv: np.ndarray) -> bytes:
    """{"start", "ts", "fs", "samples"} with the exact float32 values."""
    arr = np.asarray(samples_mv, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"samples must be 1-D, got shape {arr.shape}")
    obj = {"start": int(start), "ts": float(ts), "fs": float(fs), "samples": arr.tolist()}
    return json.dumps(obj, separators=(",", ":")).encode()


def encode_stream_binary(
    start: int,
    ts: float,
    fs: float,
    samples: np.ndarray,
    *,
    fmt: SampleFormat = "f32",
    gain: float = 0.0,
) -> bytes:
    """An ECGS v1 frame: f32 mV samples, or (fmt="i16") int16 ADC units with their gain.

    For "i16", float samples are taken as mV and quantised to round(mV * gain); integer
    samples are taken as ADC units already."""
    arr = np.asarray(samples)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"samples must be non-empty 1-D, got shape {arr.shape}")
    if fmt == "f32":
        body = arr.astype(_F32_LE, copy=False).tobytes()
        code, gain = FORMAT_F32, 0.0
    else:
        if not (math.isfinite(gain) and gain > 0):
            raise ValueError("i16 needs a positive gain (ADC units per mV)")
        units = arr if arr.dtype.kind in "iu" else np.rint(arr.astype(np.float64) * gain)
        body = np.clip(units, -32768, 32767).astype(_I16_LE).tobytes()
        code = FORMAT_I16
    try:
        header = HEADER.pack(MAGIC, VERSION, code, arr.size, start, ts, fs, gain)
    except struct.error as e:
        raise ValueError(f"cannot encode stream header: {e}") from None
    return header + body
