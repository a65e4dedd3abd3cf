"""What the central-station view knows about the fleet, built from MQTT messages only.

Pure state, no I/O: `FleetState.on_message(topic, payload, now)` folds one message in; the
server asks it for a snapshot and, ten times a second, for what changed since a client's last
tick. Stream chunks are decimated here to ~100 Hz (display resolution) with a peak-keeping
rule, so a page never receives full-rate signal and R peaks keep their height.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor import stream_wire, wire
from monitor.errors import PayloadError
from monitor.stream_wire import Chunk

DISPLAY_HZ = 100.0  # target rate of the signal sent to pages
KEEP_S = 12.0  # decimated signal kept per device (the strip shows 10 s)
RAW_KEEP_S = 12.0  # full-rate signal kept per device, for the beats of alarms
BEAT_PRE_S = 0.6  # an alarm's beat: this much before its R peak ...
BEAT_POST_S = 0.8  # ... and this much after
MAX_ALARMS = 1000  # alarms kept for the list (newest)
DEVICE_ALARMS = 20  # alarms (with their beats) kept per device for its page
QUALITY_HISTORY = 20
LIVE_S = 3.0  # a stream device with no chunk for this long is shown as "no data"
MAX_DEVICES = 10_000  # beyond this, messages of new device ids are skipped (bounded memory)
FLUSH_S = 1.0  # chunks of a device no page shows are processed once a second, in one batch


@dataclass
class Piece:
    """A run of decimated points: value i is at device time t0 + i * dt."""

    serial: int  # per device, increasing: what a client has already been sent
    t0: float
    dt: float
    values: np.ndarray  # float32

    @property
    def t_end(self) -> float:
        return self.t0 + self.dt * len(self.values)

    def to_json(self) -> list[Any]:
        return [round(self.t0, 4), self.dt, np.round(self.values, 3).tolist()]


class Decimator:
    """Full-rate chunks to ~DISPLAY_HZ points: bins of 2k samples, each shown by its minimum
    and its maximum in the order they occur (keeps R peaks and S troughs, which averaging or
    plain subsampling would flatten); the same points whatever the chunking."""

    def __init__(self, fs: float) -> None:
        self.fs = fs
        self.k = max(1, round(fs / DISPLAY_HZ))  # one point per k samples
        self._bin = 1 if self.k == 1 else 2 * self.k
        self.next_index: int | None = None  # next raw sample expected
        self._carry = np.zeros(0, np.float32)  # samples of the incomplete bin
        self._carry_start = 0  # raw index of _carry[0]

    def feed(self, start: int, x: np.ndarray) -> tuple[int, np.ndarray, bool]:
        """(raw index of the first point, points, gap_before); overlaps are dropped."""
        restart = self.next_index is not None and start + x.size < self.next_index - 60 * self.fs
        if restart or self.next_index is None or start > self.next_index:
            gap = self.next_index is not None  # a gap, or the device restarted its count
            self._carry = np.zeros(0, np.float32)
            self._carry_start = start
        else:
            gap = False
            x = x[self.next_index - start :]  # drop what was already seen
            start = self.next_index
        if x.size == 0:
            return start, np.zeros(0, np.float32), False
        self.next_index = start + x.size
        buf = np.concatenate([self._carry, x]) if self._carry.size else x
        first = self._carry_start
        b = self._bin
        n = buf.size // b
        self._carry = buf[n * b :].copy()
        self._carry_start = first + n * b
        if n == 0:
            return first, np.zeros(0, np.float32), gap
        if b == 1:
            return first, buf[:n].astype(np.float32), gap
        bins = buf[: n * b].reshape(n, b)
        hi, lo = bins.max(axis=1), bins.min(axis=1)
        max_first = bins.argmax(axis=1) < bins.argmin(axis=1)
        out = np.empty((n, 2), np.float32)
        out[:, 0] = np.where(max_first, hi, lo)
        out[:, 1] = np.where(max_first, lo, hi)
        return first, out.ravel(), gap


class RateEstimator:
    """Heart rate for the display from R peaks found on the decimated signal: steepest-slope
    peaks above 40 % of the recent maximum slope, 250 ms refractory, median of the last RRs.
    Works on whole batches (a second of signal at a time), so its cost is a few numpy calls."""

    WINDOW_S = 3.0
    REFRACTORY_S = 0.25
    CONFIRM_S = 0.15
    MAX_RR = 8

    def __init__(self) -> None:
        self._v = np.zeros(0, np.float32)
        self._t0 = 0.0  # device time of _v[0]
        self._dt = 0.0
        self.last_peak: float | None = None
        self.rr: deque[float] = deque(maxlen=self.MAX_RR)

    def reset(self) -> None:
        self._v = np.zeros(0, np.float32)
        self.last_peak = None
        self.rr.clear()

    def feed(self, t0: float, dt: float, values: np.ndarray) -> list[float]:
        """Device times of the R peaks confirmed by these points (contiguous with the last)."""
        expected = self._t0 + self._dt * self._v.size
        if self._v.size == 0 or dt != self._dt or abs(t0 - expected) > 1.5 * dt:
            if self._v.size:
                self.reset()
            self._v, self._t0, self._dt = values.astype(np.float32), t0, dt
        else:
            self._v = np.concatenate([self._v, values])
        keep = round(self.WINDOW_S / dt)
        if self._v.size > keep:
            self._t0 += (self._v.size - keep) * dt
            self._v = self._v[-keep:]
        if self._v.size < 8:
            return []
        slope = np.abs(np.diff(self._v))
        top = float(slope.max())
        if top <= 1e-6:
            return []
        above = np.concatenate([[0], (slope > 0.4 * top).view(np.int8), [0]])
        edges = np.flatnonzero(np.diff(above))
        t_confirm = self._t0 + dt * self._v.size - self.CONFIRM_S
        found = []
        lo_runs, hi_runs = edges[0::2], edges[1::2]
        if self.last_peak is not None:  # runs already looked at in an earlier call
            new = hi_runs > (self.last_peak + self.REFRACTORY_S - self._t0) / dt
            lo_runs, hi_runs = lo_runs[new], hi_runs[new]
        for lo, hi in zip(lo_runs.tolist(), hi_runs.tolist(), strict=True):
            ti = self._t0 + dt * (lo + int(slope[lo:hi].argmax()))
            if ti > t_confirm:
                break
            if self.last_peak is not None:
                if ti < self.last_peak + self.REFRACTORY_S:
                    continue
                if ti - self.last_peak < 2.5:
                    self.rr.append(ti - self.last_peak)
            self.last_peak = ti
            found.append(ti)
        return found

    def bpm(self, now_t: float) -> float | None:
        """Median-RR heart rate; None with fewer than two RRs or no beat for 3 s."""
        if len(self.rr) < 2 or self.last_peak is None or now_t - self.last_peak > 3.0:
            return None
        rr = sorted(self.rr)
        mid = len(rr) // 2
        hr = 60.0 / (rr[mid] if len(rr) % 2 else (rr[mid - 1] + rr[mid]) / 2)
        return hr if 20.0 <= hr <= 300.0 else None


@dataclass
class Alarm:
    """One alert as the view lists it; `acked` is the view's own state, never published."""

    id: int
    device_id: str
    kind: str  # "stream" (a beat found in a stream) or "window"
    seq: int
    ts: float
    score: float | None
    threshold: float | None
    p_value: float | None
    hr_bpm: float | None
    model: str
    received_at: float
    published_at: float | None = None  # the daemon's clock
    acked: bool = False
    r_index: int | None = None  # stream sample index of the beat, when known
    beat: dict[str, Any] | None = None  # the signal around it, once the view has it

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device": self.device_id,
            "kind": self.kind,
            "seq": self.seq,
            "ts": self.ts,
            "score": self.score,
            "threshold": self.threshold,
            "p_value": self.p_value,
            "hr_bpm": self.hr_bpm,
            "model": self.model,
            "received_at": self.received_at,
            "published_at": self.published_at,
            "acked": self.acked,
        }


@dataclass
class Device:
    """Everything the view shows for one device."""

    id: str
    version: int = 0  # bumped whenever the summary changes (but for the heart rate)
    hr_version: int = 0  # bumped whenever the rounded heart rate changes
    fs: float | None = None
    decimator: Decimator | None = None
    pieces: deque[Piece] = field(default_factory=deque)
    serial: int = 0
    last_chunk_at: float | None = None  # view's clock
    last_t: float | None = None  # device time of the newest sample
    live: bool = False
    hr: RateEstimator = field(default_factory=RateEstimator)
    hr_bpm: float | None = None
    quality: dict[str, Any] | None = None
    quality_history: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=QUALITY_HISTORY)
    )
    alarms: deque[Alarm] = field(default_factory=lambda: deque(maxlen=DEVICE_ALARMS))
    unacked: int = 0
    rejects: int = 0
    # Full-rate ring buffer (for the beats of alarms) and the index -> time mapping.
    raw: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    raw_end: int = 0  # index after the newest raw sample
    raw_from: int = 0  # oldest valid index (gaps and fs changes restart it)
    anchor: tuple[int, float] = (0, math.nan)  # (sample index, device time) of the last chunk
    pending: list[Alarm] = field(default_factory=list)  # alarms waiting for their beat's samples
    inbox: list[tuple[Chunk, float]] = field(default_factory=list)  # (chunk, received)
    flushed_at: float = 0.0
    phase: float = 0.0  # where in each FLUSH_S period an unwatched device is processed

    def summary(self) -> dict[str, Any]:
        q = self.quality or {}
        return {
            "id": self.id,
            "v": self.version,
            "stream": self.fs is not None,
            "fs": self.fs,
            "live": self.live,
            "hr": round(self.hr_bpm) if self.hr_bpm is not None else None,
            "quality": q.get("state"),
            "quality_reason": q.get("reason"),
            "unacked": self.unacked,
            "alarms": len(self.alarms),
            "rejects": self.rejects,
        }

    def index_of(self, t: float) -> int | None:
        """Stream sample index at device time t (from the latest chunk's start and ts)."""
        idx, t_idx = self.anchor
        if self.fs is None or not math.isfinite(t_idx):
            return None
        return idx + round((t - t_idx) * self.fs)

    def time_of(self, index: int) -> float | None:
        idx, t_idx = self.anchor
        if self.fs is None or not math.isfinite(t_idx):
            return None
        return t_idx + (index - idx) / self.fs

    def store_raw(self, start: int, x: np.ndarray) -> None:
        assert self.fs is not None
        cap = self.raw.size
        if cap == 0:
            cap = math.ceil(RAW_KEEP_S * self.fs)
            self.raw = np.zeros(cap, np.float32)
        if start != self.raw_end:
            self.raw_from = start
        if x.size >= cap:
            x, start = x[-cap:], start + x.size - cap
        at = start % cap
        first = min(x.size, cap - at)
        self.raw[at : at + first] = x[:first]
        self.raw[: x.size - first] = x[first:]
        self.raw_end = start + x.size
        self.raw_from = max(self.raw_from, self.raw_end - cap)

    def beat_at(self, r: int, *, complete: bool) -> dict[str, Any] | None:
        """The signal around sample r, or None while (if `complete`) it has not all arrived."""
        if self.fs is None or self.raw.size == 0:
            return None
        lo = r - round(BEAT_PRE_S * self.fs)
        hi = r + round(BEAT_POST_S * self.fs)
        if complete and hi > self.raw_end:
            return None
        lo_ok, hi_ok = max(lo, self.raw_from), min(hi, self.raw_end)
        if hi_ok - lo_ok < 2 or not lo_ok <= r < hi_ok:
            return None
        x = self.raw[np.arange(lo_ok, hi_ok) % self.raw.size]
        return {
            "fs": self.fs,
            "r": r - lo_ok,  # R peak's position in `values`
            "values": np.round(x, 4).tolist(),
        }


def _num(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


@dataclass
class ClientCursor:
    """What one page has been sent: per device its summary version and newest signal piece."""

    watched: set[str] = field(default_factory=set)
    versions: dict[str, int] = field(default_factory=dict)
    hr_versions: dict[str, int] = field(default_factory=dict)
    pieces: dict[str, int] = field(default_factory=dict)
    alarm_id: int = 0  # alarms with a larger id are new to it
    ack_version: int = 0
    meta_version: int = -1


class FleetState:
    """Devices, alarms, daemons and broker link; fed messages, asked for page updates."""

    def __init__(self, prefix: str = "ecg") -> None:
        self.prefix = prefix
        self.devices: dict[str, Device] = {}
        self.alarms: deque[Alarm] = deque(maxlen=MAX_ALARMS)
        self.next_alarm = 1
        self.acked: deque[int] = deque(maxlen=MAX_ALARMS)  # ids in ack order
        self.ack_version = 0
        self.daemons: dict[str, dict[str, Any]] = {}
        self.broker_connected = False
        self.broker_changed_at: float | None = None
        self.meta_version = 0
        self.messages = 0
        self.skipped = 0  # messages that were not valid (or not ours)
        self._topics: dict[str, tuple[str, str] | None] = {}  # topic -> (device, kind)

    def _parse_topic(self, topic: str) -> tuple[str, str] | None:
        hit = self._topics.get(topic, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        head = self.prefix + "/"
        device_id, _, kind = topic[len(head) :].rpartition("/")
        parsed = (
            (device_id, kind)
            if topic.startswith(head) and wire.DEVICE_ID_RE.match(device_id)
            else None
        )
        if len(self._topics) > 100_000:
            self._topics.clear()
        self._topics[topic] = parsed
        return parsed

    # ------------------------------------------------------------------ inputs

    def subscriptions(self) -> list[tuple[str, int]]:
        """Topics the view reads: streams at QoS 0 (display only), the rest at QoS 1."""
        p = self.prefix
        return [
            (f"{p}/+/stream", 0),
            (f"{p}/+/alert", 1),
            (f"{p}/+/quality", 1),
            (f"{p}/+/rejected", 0),
            ("ecg-monitor/+/status", 1),
        ]

    def set_broker(self, connected: bool, now: float) -> None:
        if connected != self.broker_connected:
            self.broker_connected = connected
            self.broker_changed_at = now
            self.meta_version += 1

    def device(self, device_id: str) -> Device | None:
        d = self.devices.get(device_id)
        if d is None:
            if len(self.devices) >= MAX_DEVICES:
                return None
            d = self.devices[device_id] = Device(device_id)
            # Spread the once-a-second processing of unwatched devices over the second.
            d.phase = (zlib.crc32(device_id.encode()) % 1000) / 1000.0 * FLUSH_S
        return d

    def on_message(self, topic: str, payload: bytes, now: float) -> None:
        self.messages += 1
        parsed = self._parse_topic(topic)
        if parsed is None:
            parts = topic.split("/")
            if len(parts) == 3 and parts[0] == "ecg-monitor" and parts[2] == "status":
                self._on_status(parts[1], payload)
            else:
                self.skipped += 1
            return
        device_id, kind = parsed
        if kind == "stream":
            try:
                chunk = stream_wire.decode_stream(payload, device_id)
            except PayloadError:
                self.skipped += 1  # the daemon rejects it, with the reason, on .../rejected
                return
            d = self.device(device_id)
            if d is None:
                self.skipped += 1
                return
            d.inbox.append((chunk, now))
            d.last_chunk_at = now
            if not d.live:
                d.live = True
                d.version += 1
            return
        try:
            obj = json.loads(payload) if payload else None
        except (ValueError, UnicodeDecodeError):
            obj = None
        if not isinstance(obj, dict):
            self.skipped += 1
            return
        d = self.device(device_id)
        if d is None:
            self.skipped += 1
            return
        if kind == "alert":
            self._on_alert(d, obj, now)
        elif kind == "quality":
            self._on_quality(d, obj, now)
        elif kind == "rejected":
            d.rejects += 1
            d.version += 1
        else:
            self.skipped += 1

    def _on_status(self, instance: str, payload: bytes) -> None:
        try:
            obj = json.loads(payload) if payload else None
        except (ValueError, UnicodeDecodeError):
            obj = None
        if not isinstance(obj, dict):
            self.daemons.pop(instance, None)  # a cleared retained status
        else:
            self.daemons[instance] = {
                "instance_id": instance,
                "state": str(obj.get("state", "?")),
                "model": str(obj.get("model", "")),
                "model_version": str(obj.get("model_version", "")),
                "started_at": _num(obj.get("started_at")),
            }
        self.meta_version += 1

    def flush(self, d: Device, now: float) -> None:
        """Process a device's queued chunks, contiguous ones as one array."""
        inbox, d.inbox = d.inbox, []
        d.flushed_at = now
        i = 0
        while i < len(inbox):
            group = [inbox[i][0]]
            at = inbox[i][1]
            i += 1
            while (
                i < len(inbox)
                and inbox[i][0].start == group[-1].end
                and inbox[i][0].fs == group[-1].fs
            ):
                group.append(inbox[i][0])
                i += 1
            c = group[0]
            if len(group) > 1:  # one array: the numpy calls below run once, not per chunk
                x = np.concatenate([g.samples_mv for g in group])
                c = Chunk(c.device_id, c.start, c.ts, c.fs, x)
            self._on_chunk(d, c, at)
        if inbox and d.last_t is not None:
            hr = d.hr.bpm(d.last_t)
            hr_r = round(hr) if hr is not None else None
            if hr_r != (round(d.hr_bpm) if d.hr_bpm is not None else None):
                d.hr_version += 1  # sent as a compact {id: bpm} map, not a whole summary
            d.hr_bpm = hr

    def _on_chunk(self, d: Device, c: Chunk, now: float) -> None:
        if d.fs != c.fs or d.decimator is None:
            d.fs = c.fs
            d.decimator = Decimator(c.fs)
            d.raw = np.zeros(0, np.float32)
            d.raw_end = d.raw_from = c.start
            d.hr.reset()
            d.version += 1
        ts = c.ts
        d.anchor = (c.start, ts)
        samples = c.samples_mv
        first, points, gap = d.decimator.feed(c.start, samples)
        end = c.end
        if end > d.raw_end or gap:
            keep = samples[max(0, d.raw_end - c.start) :] if not gap else samples
            d.store_raw(end - keep.size, keep)
        if gap:
            d.hr.reset()
        if points.size:
            dt = d.decimator.k / c.fs
            t0 = ts + (first - c.start) / c.fs
            d.serial += 1
            d.pieces.append(Piece(d.serial, t0, dt, points))
            t_end = t0 + dt * points.size
            while d.pieces and d.pieces[0].t_end < t_end - KEEP_S:
                d.pieces.popleft()
            d.hr.feed(t0, dt, points)
            d.last_t = t_end
        if d.pending:
            still = []
            for a in d.pending:
                beat = d.beat_at(a.r_index, complete=True) if a.r_index is not None else None
                if beat is not None:
                    a.beat = beat
                elif a.r_index is not None and a.r_index >= d.raw_from:
                    still.append(a)
            d.pending = still

    def _on_alert(self, d: Device, obj: dict[str, Any], now: float) -> None:
        seq = obj.get("seq")
        ts = _num(obj.get("ts"))
        if not isinstance(seq, int) or ts is None:
            self.skipped += 1
            return
        if d.inbox:
            self.flush(d, now)
        stream = obj.get("source") == "stream"
        a = Alarm(
            id=self.next_alarm,
            device_id=d.id,
            kind="stream" if stream else "window",
            seq=seq,
            ts=ts,
            score=_num(obj.get("score")),
            threshold=_num(obj.get("threshold")),
            p_value=_num(obj.get("p_value")),
            hr_bpm=_num(obj.get("hr_bpm")),
            model=str(obj.get("model", "")),
            received_at=now,
            published_at=_num(obj.get("published_at")),
        )
        self.next_alarm += 1
        # A stream alert's seq is its R peak's sample index; a window alert on a device that
        # also streams is placed at its device time.
        a.r_index = seq if stream else d.index_of(ts)
        if a.r_index is not None:
            a.beat = d.beat_at(a.r_index, complete=True)
            if a.beat is None:
                d.pending.append(a)
        self.alarms.append(a)
        d.alarms.append(a)
        d.unacked = sum(not x.acked for x in d.alarms)
        d.version += 1

    def _on_quality(self, d: Device, obj: dict[str, Any], now: float) -> None:
        state = obj.get("state")
        if not isinstance(state, str):
            self.skipped += 1
            return
        q = {
            "state": state,
            "since": obj.get("since") if isinstance(obj.get("since"), int) else None,
            "since_ts": _num(obj.get("since_ts")),
            "reason": str(obj.get("reason", ""))[:200],
            "received_at": now,
        }
        d.quality = q
        d.quality_history.append(q)
        d.version += 1

    def ack(self, ids: list[int] | None, device_id: str | None = None) -> int:
        """Acknowledge these alarm ids (None: all, or all of `device_id`); how many changed."""
        wanted = set(ids) if ids is not None else None
        changed = 0
        touched: set[str] = set()
        for a in self.alarms:
            if a.acked or (wanted is not None and a.id not in wanted):
                continue
            if device_id is not None and a.device_id != device_id:
                continue
            a.acked = True
            self.acked.append(a.id)
            touched.add(a.device_id)
            changed += 1
        for dev_id in touched:
            d = self.devices[dev_id]
            d.unacked = sum(not x.acked for x in d.alarms)
            d.version += 1
        if changed:
            self.ack_version += 1
        return changed

    def tick(self, now: float, watched: set[str] | frozenset[str] = frozenset()) -> None:
        """Once per update: process the chunks of devices on some page (all others once a
        second), and notice devices that went quiet."""
        for d in self.devices.values():
            due = (now - d.phase) // FLUSH_S > (d.flushed_at - d.phase) // FLUSH_S
            if d.inbox and (due or d.id in watched):
                self.flush(d, now)
            live = d.last_chunk_at is not None and now - d.last_chunk_at <= LIVE_S
            if live != d.live:
                d.live = live
                d.version += 1

    # ------------------------------------------------------------------ outputs

    def meta(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "broker": {"connected": self.broker_connected, "since": self.broker_changed_at},
            "daemons": sorted(self.daemons.values(), key=lambda x: x["instance_id"]),
        }

    def snapshot(self, cursor: ClientCursor) -> dict[str, Any]:
        """Everything a page starts from; moves `cursor` to now."""
        cursor.versions = {d.id: d.version for d in self.devices.values()}
        cursor.hr_versions = {d.id: d.hr_version for d in self.devices.values()}
        cursor.pieces = {}
        cursor.alarm_id = self.next_alarm - 1
        cursor.ack_version = self.ack_version
        cursor.meta_version = self.meta_version
        return {
            "t": "snapshot",
            "meta": self.meta(),
            "devices": [d.summary() for d in self.devices.values()],
            "alarms": [a.to_json() for a in self.alarms],
        }

    def update(self, cursor: ClientCursor) -> dict[str, Any] | None:
        """What changed for this page since its last update (None: nothing)."""
        out: dict[str, Any] = {"t": "tick"}
        devs = []
        hrs: dict[str, int | None] = {}
        for d in self.devices.values():
            if cursor.versions.get(d.id) != d.version:
                cursor.versions[d.id] = d.version
                cursor.hr_versions[d.id] = d.hr_version
                devs.append(d.summary())
            elif cursor.hr_versions.get(d.id) != d.hr_version:
                cursor.hr_versions[d.id] = d.hr_version
                hrs[d.id] = round(d.hr_bpm) if d.hr_bpm is not None else None
        if devs:
            out["devices"] = devs
        if hrs:
            out["hr"] = hrs
        sig: dict[str, list[Any]] = {}
        for dev_id in cursor.watched:
            dev = self.devices.get(dev_id)
            if dev is None or not dev.pieces:
                continue
            sent = cursor.pieces.get(dev_id, 0)
            if dev.pieces[-1].serial <= sent:
                continue
            sig[dev_id] = [p.to_json() for p in dev.pieces if p.serial > sent]
            cursor.pieces[dev_id] = dev.pieces[-1].serial
        if sig:
            out["signal"] = sig
        if self.next_alarm - 1 > cursor.alarm_id:
            out["alarms"] = [a.to_json() for a in self.alarms if a.id > cursor.alarm_id]
            cursor.alarm_id = self.next_alarm - 1
        if self.ack_version != cursor.ack_version:
            cursor.ack_version = self.ack_version
            out["acked"] = list(self.acked)[-200:]
        if self.meta_version != cursor.meta_version:
            cursor.meta_version = self.meta_version
            out["meta"] = self.meta()
        return out if len(out) > 1 else None

    def device_detail(self, device_id: str) -> dict[str, Any] | None:
        d = self.devices.get(device_id)
        if d is None:
            return None
        if d.inbox:
            self.flush(d, d.flushed_at)
        return {
            "t": "device",
            "id": d.id,
            "summary": d.summary(),
            "quality_history": list(d.quality_history),
            "beats": [
                {**a.to_json(), "beat": a.beat}
                for a in reversed(d.alarms)  # newest first
            ],
        }
