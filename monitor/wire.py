"""Payload codecs for heartbeat windows (JSON and the ECGW binary frame), shared with the simulator.

`decode` turns any bytes into a validated `Frame` or raises `PayloadError` with a reject code
from DESIGN.md; it never raises anything else.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.errors import PayloadError

MAGIC = b"ECGW"
VERSION = 1
# magic, version u16, count u16, length u32, seq u64, ts f64, fs f32: 32 bytes, little-endian.
HEADER = struct.Struct("<4sHHIQdf")
# Same as ^[A-Za-z0-9_.-]{1,64}$, but \Z so that a trailing newline never matches.
DEVICE_ID_RE: re.Pattern[str] = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")

U64_MAX = (1 << 64) - 1
F32_MAX = float(np.finfo(np.float32).max)
# Default bound on |sample|: far above any ECG in z-scores (ECG5000: |x| < ~10), millivolts
# (|x| < ~20), microvolts or 16-bit/typical 24-bit ADC counts, and far below where float32
# arithmetic in a model (sums over a window, squares in a z-score) overflows.
MAX_ABS_SAMPLE = 1e6
_F32_LE = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class Window:
    """One heartbeat window of one device."""

    device_id: str
    seq: int
    ts: float
    fs: float | None
    samples: np.ndarray  # float32 [length], read-only


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded message: `count` windows of one device with consecutive seqs."""

    device_id: str
    seq: int  # seq of the first window
    ts: float  # device time of the first window
    fs: float | None  # None when unknown (binary fs == 0 or JSON absent/null)
    samples: np.ndarray  # float32, C-contiguous, [count, length], read-only

    def __post_init__(self) -> None:
        s = self.samples
        if s.dtype != np.float32 or s.ndim != 2 or not s.flags.c_contiguous:
            raise ValueError(
                f"Frame.samples must be C-contiguous f32 [count, length], not {s.dtype} {s.shape}"
            )
        if s.flags.writeable:
            view = s.view()
            view.flags.writeable = False
            object.__setattr__(self, "samples", view)

    @property
    def count(self) -> int:
        return int(self.samples.shape[0])

    @property
    def context(self) -> None:
        """Windows carry no per-row context features (see `monitor.batcher.Rows`)."""
        return None

    @property
    def length(self) -> int:
        return int(self.samples.shape[1])

    def window_ts(self, i: int) -> float:
        """Device time of window `i`: ts + i*length/fs when fs is known, else ts."""
        if self.fs is None:
            return self.ts
        return self.ts + i * self.length / self.fs

    def window(self, i: int) -> Window:
        if not 0 <= i < self.count:
            raise IndexError(f"window {i} of a frame of {self.count}")
        return Window(self.device_id, self.seq + i, self.window_ts(i), self.fs, self.samples[i])

    def windows(self) -> list[Window]:
        return [self.window(i) for i in range(self.count)]


def parse_topic(topic: str, prefix: str, kind: str = "window") -> str:
    """`<prefix>/<device_id>/<kind>` -> device_id; PayloadError("bad_device_id") otherwise.

    `kind` is the input's last topic level: "window", or "stream" (monitor.stream_wire).
    """
    head, tail = prefix + "/", "/" + kind
    if topic.startswith(head) and topic.endswith(tail) and len(topic) > len(head) + len(tail):
        device_id = topic[len(head) : -len(tail)]
        if DEVICE_ID_RE.match(device_id):
            return device_id
    raise PayloadError("bad_device_id", f"topic {topic[:200]!r} is not {prefix}/<device_id>/{kind}")


def check_device_id(device_id: str) -> None:
    if not DEVICE_ID_RE.match(device_id):
        raise PayloadError(
            "bad_device_id", f"device id {device_id[:80]!r} is not 1-64 of [A-Za-z0-9_.-]"
        )


def decode(
    payload: bytes,
    device_id: str,
    *,
    window_length: int,
    max_bytes: int = 1 << 20,
    max_windows: int = 4096,
    max_abs: float = F32_MAX,
) -> Frame:
    """Decode and validate one message; raises PayloadError with the reject code.

    `max_abs`: samples beyond +-max_abs are `out_of_range` (finite windows a model can only
    score with an overflowing, meaningless score; the daemon passes `MAX_ABS_SAMPLE` or its
    configured bound)."""
    if len(payload) > max_bytes:
        raise PayloadError("too_large", f"{len(payload)} bytes > limit {max_bytes}")
    check_device_id(device_id)
    if not isinstance(payload, bytes):
        payload = bytes(payload)  # a read-only buffer the returned samples can share
    if payload[:4] == MAGIC:
        frame, peak = _decode_binary(payload, device_id, window_length, max_windows)
    else:
        frame = _decode_json(payload, device_id, window_length, max_windows)
        peak = float(np.abs(frame.samples).max())
    if peak > max_abs:
        raise PayloadError(
            "out_of_range", f"a sample of magnitude {peak:.3g} exceeds the bound {max_abs:.3g}"
        )
    if not math.isfinite(frame.window_ts(frame.count - 1)):
        raise PayloadError("bad_field", f"fs {frame.fs} is so small that window times overflow")
    return frame


def _decode_binary(
    payload: bytes, device_id: str, window_length: int, max_windows: int
) -> tuple[Frame, float]:
    """The frame and its largest sample magnitude: one pass over the samples finds both a
    non-finite sample (max |x| is NaN or inf exactly when one is) and the range check's peak."""
    if len(payload) < HEADER.size:
        raise PayloadError(
            "bad_frame", f"binary frame of {len(payload)} bytes < {HEADER.size}-byte header"
        )
    _, version, count, length, seq, ts, fs = HEADER.unpack_from(payload)
    if version != VERSION:
        raise PayloadError("bad_frame", f"frame version {version}, expected {VERSION}")
    if count == 0:
        raise PayloadError("bad_frame", "frame count is 0")
    if count > max_windows:
        raise PayloadError("too_large", f"{count} windows > limit {max_windows}")
    expected = HEADER.size + 4 * count * length
    if len(payload) != expected:
        raise PayloadError(
            "bad_frame", f"frame is {len(payload)} bytes, header says {expected} ({count}x{length})"
        )
    if length != window_length:
        raise PayloadError("bad_length", f"window length {length}, expected {window_length}")
    if seq + count - 1 > U64_MAX:
        raise PayloadError("bad_field", "seq + count - 1 overflows u64")
    if not math.isfinite(ts):
        raise PayloadError("bad_field", "ts is not finite")
    if fs != 0.0 and not (math.isfinite(fs) and fs > 0.0):
        raise PayloadError("bad_field", f"fs {fs} is not 0 or a positive finite number")
    samples = np.frombuffer(payload, dtype=_F32_LE, offset=HEADER.size).reshape(count, length)
    if samples.dtype != np.float32:  # big-endian host
        samples = samples.astype(np.float32)
    peak = float(np.abs(samples).max())
    if not math.isfinite(peak):
        raise PayloadError("non_finite", "samples contain NaN or Inf")
    return Frame(device_id, seq, ts, float(fs) if fs != 0.0 else None, samples), peak


def _is_number(v: object) -> bool:
    return type(v) is float or type(v) is int


def _decode_json(payload: bytes, device_id: str, window_length: int, max_windows: int) -> Frame:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise PayloadError("bad_json", "payload is neither an ECGW frame nor UTF-8") from None
    except RecursionError:
        raise PayloadError("bad_json", "JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and int literals beyond the digit limit
        raise PayloadError("bad_json", f"unparsable JSON: {str(e)[:120]}") from None
    if not isinstance(obj, dict):
        raise PayloadError("bad_json", f"JSON payload is a {type(obj).__name__}, not an object")

    seq = obj.get("seq")
    if type(seq) is not int or not 0 <= seq <= U64_MAX:
        raise PayloadError("bad_field", "seq must be a non-negative integer < 2**64")
    ts = _finite_float(obj.get("ts"))
    if ts is None:
        raise PayloadError("bad_field", "ts must be a finite number")
    fs_raw = obj.get("fs")
    fs: float | None = None
    if fs_raw is not None:
        fs = _finite_float(fs_raw)
        if fs is None or fs <= 0.0:
            raise PayloadError("bad_field", "fs must be null or a positive finite number")

    has_samples, has_windows = "samples" in obj, "windows" in obj
    if has_samples == has_windows:
        raise PayloadError("bad_field", "exactly one of 'samples' and 'windows' is required")
    if has_samples:
        rows: Any = [obj["samples"]]
        if not isinstance(obj["samples"], list):
            raise PayloadError("bad_field", "samples must be a list of numbers")
    else:
        rows = obj["windows"]
        if not isinstance(rows, list):
            raise PayloadError("bad_field", "windows must be a list of lists of numbers")
        if not rows:
            raise PayloadError("bad_field", "windows is empty")
        if len(rows) > max_windows:
            raise PayloadError("too_large", f"{len(rows)} windows > limit {max_windows}")

    samples = _fast_samples(rows, payload)
    if samples is None:
        samples = _precise_samples(rows, window_length)
    if samples.shape[1] != window_length:
        raise PayloadError(
            "bad_length", f"window length {samples.shape[1]}, expected {window_length}"
        )
    if seq + samples.shape[0] - 1 > U64_MAX:
        raise PayloadError("bad_field", "seq + count - 1 overflows u64")
    if not np.isfinite(samples).all():
        raise PayloadError("non_finite", "samples contain NaN or Inf, or overflow float32")
    samples.flags.writeable = False
    return Frame(device_id, seq, ts, fs, samples)


def _finite_float(v: object) -> float | None:
    if not _is_number(v):
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _fast_samples(rows: list[Any], payload: bytes) -> np.ndarray | None:
    """One numpy conversion for the common case; None when only the precise path can tell."""
    if b"true" in payload or b"false" in payload:
        return None  # numpy would silently turn booleans into numbers
    try:
        arr = np.asarray(rows)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(arr, dtype=np.float32)


def _precise_samples(rows: list[Any], window_length: int) -> np.ndarray:
    """Walk the rows to name the precise problem: types first, then lengths, then values."""
    for row in rows:
        if not isinstance(row, list):
            raise PayloadError("bad_field", "each window must be a list of numbers")
        for v in row:
            if not _is_number(v):
                raise PayloadError("bad_field", f"window holds a {type(v).__name__}, not a number")
    for row in rows:
        if len(row) != window_length:
            raise PayloadError("bad_length", f"window length {len(row)}, expected {window_length}")
    out = np.empty((len(rows), window_length), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for i, row in enumerate(rows):
            try:
                out[i] = np.array(row, dtype=np.float64)
            except OverflowError:  # an int beyond float64
                raise PayloadError("non_finite", "a sample overflows float32") from None
    return out


def _as_rows(samples: np.ndarray) -> np.ndarray:
    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim not in (1, 2):
        raise ValueError(f"samples must be 1-D or 2-D, got shape {arr.shape}")
    return arr


def encode_json(seq: int, ts: float, samples: np.ndarray, fs: float | None = None) -> bytes:
    """1-D samples -> {"samples": [...]}, 2-D -> {"windows": [[...], ...]}; exact float32 values."""
    arr = _as_rows(samples)
    obj: dict[str, Any] = {"seq": int(seq), "ts": float(ts)}
    if fs is not None:
        obj["fs"] = float(fs)
    obj["samples" if arr.ndim == 1 else "windows"] = arr.tolist()
    return json.dumps(obj, separators=(",", ":")).encode()


def encode_binary(seq: int, ts: float, samples: np.ndarray, fs: float = 0.0) -> bytes:
    """An ECGW v1 frame; 1-D samples make a frame of one window."""
    arr = _as_rows(samples)
    if arr.ndim == 1:
        arr = arr[None, :]
    count, length = arr.shape
    if not 1 <= count <= 0xFFFF:
        raise ValueError(f"a frame holds 1..65535 windows, got {count}")
    try:
        header = HEADER.pack(MAGIC, VERSION, count, length, seq, ts, fs)
    except struct.error as e:
        raise ValueError(f"cannot encode frame header: {e}") from None
    return header + arr.astype(_F32_LE, copy=False).tobytes()
