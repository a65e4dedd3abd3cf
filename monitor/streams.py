"""Continuous ECG streams as an input kind: chunks -> per-device front end -> beats -> the
shared batcher -> beat alerts, quality events, and acknowledgement per beat.

At least once per beat (DESIGN.md, Delivery): a chunk is acknowledged only when its samples
are not needed again, i.e. when it ends before both the front end's `needed_from()` (what a
fresh front end must be fed to find every beat not yet emitted) and the restart point of every
emitted beat whose score or alert is not yet acknowledged. A daemon killed at any moment gets
every such chunk redelivered and finds the same beats again.

Device affinity for scale-out: `streams.partition = "i/n"` owns the devices with
crc32(device_id) % n == i and acknowledges every other device's chunk unread.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import structlog

from monitor.alerts import Alert, BeatScores, Quality, Reject
from monitor.batcher import Segment
from monitor.engine import Model
from monitor.errors import ConfigError, DataError, PayloadError
from monitor.frontend.segment import Segmentation
from monitor.frontend.stream import FrontEnd, FrontEndOutput
from monitor.mqtt import Message
from monitor.pipeline import Pipeline, Token
from monitor.scorer import Scores
from monitor.stream_wire import Chunk, decode_stream, parse_stream_topic

log = structlog.get_logger("monitor.streams")

_SWEEP_S = 1.0  # idle devices are looked for at most this often


def owner_of(device_id: str, n: int) -> int:
    """The partition (0..n-1) that owns a device: stable across hosts and restarts."""
    return zlib.crc32(device_id.encode()) % n


@dataclass(frozen=True, slots=True)
class BeatRows:
    """Beats of one device ready for the model (`monitor.batcher.Rows`)."""

    samples: np.ndarray  # float32 [n, L]
    context: np.ndarray | None  # float32 [n, k] or None when the model takes no context

    @property
    def count(self) -> int:
        return int(self.samples.shape[0])


@dataclass(slots=True, eq=False)
class Beats:
    """Token: beats one chunk completed; open until scored and every output acknowledged."""

    owner: StreamInput
    device: Device
    r_index: np.ndarray  # int64 [n]: sample index of each R peak
    ts: np.ndarray  # float64 [n]: device time of each R peak
    rr_s: np.ndarray  # float64 [n]: RR interval before each beat (nan when unknown)
    alertable: np.ndarray  # bool [n]: signal quality was good at the R peak
    keep_from: int  # a fresh front end fed from here finds these beats again
    received_at: float
    rows_left: int
    publishes_left: int = 0
    scores: np.ndarray | None = None


@dataclass(slots=True, eq=False)
class Held:
    """An unacknowledged chunk: what `ack` needs, not its samples."""

    msg: Message
    end: int


@dataclass(slots=True, eq=False)
class Device:
    """One device's stream state: front end, expected next sample, held chunks, open beats."""

    device_id: str
    fe: FrontEnd
    last_seen: float
    anchor: tuple[int, float] = (0, 0.0)  # (sample index, its device time) of the last chunk
    held: deque[Held] = field(default_factory=deque)
    open_beats: list[Beats] = field(default_factory=list)
    open_publishes: int = 0  # quality events not yet acknowledged
    quality: list[tuple[int, str]] = field(default_factory=list)  # (since, state), ascending
    flushed: bool = False  # the front end was flushed for idleness (no more feeds expected)
    last_count: int = 0  # the input's chunk count at this device's last chunk

    def ts_of(self, index: np.ndarray) -> np.ndarray:
        start, ts = self.anchor
        return ts + (index.astype(np.float64) - start) / self.fe.fs

    def state_at(self, index: int) -> str:
        state = "learning"
        for since, s in self.quality:
            if since > index:
                break
            state = s
        return state


class StreamInput:
    """`<prefix>/+/stream`: chunks of one lead per device, beats scored with the model."""

    def __init__(self, pipe: Pipeline, model: Model) -> None:
        self.p = pipe
        self.cfg = pipe.cfg.streams
        self.seg = segmentation_of(model)
        self.context_size = model.info.context_size
        self.devices: dict[str, Device] = {}
        self.part_i, self.part_n = self.cfg.part
        self.open_beats = 0
        self.open_rejects = 0
        self.held = 0  # unacknowledged chunks over all devices
        rm = pipe.cfg.mqtt.receive_maximum
        # Above this many held chunks the broker would soon stop sending (Receive Maximum) and
        # every device would wait for chunks that cannot come: the oldest are acked instead.
        self.held_cap = max(1, rm - max(16, rm // 20))
        self.forced_acks = 0
        self.chunk_count = 0
        self.last_chunk_at = time.monotonic()
        self._tail = "/stream"
        self._last_sweep = time.monotonic()
        pipe.metrics.stream_devices.set(0)

    @property
    def topic_filter(self) -> str:
        topic = f"{self.p.prefix}/+/stream"
        group = self.cfg.share_group
        return f"$share/{group}/{topic}" if group else topic

    def accepts(self, topic: str) -> bool:
        return topic.endswith(self._tail)

    def busy(self) -> int:
        return (
            self.open_beats
            + self.open_rejects
            + sum(d.open_publishes for d in self.devices.values())
        )

    def owns(self, device_id: str) -> bool:
        return self.part_n == 1 or owner_of(device_id, self.part_n) == self.part_i

    # ------------------------------------------------------------------ incoming

    def on_message(self, msg: Message) -> None:
        p, m = self.p, self.p.metrics
        now = time.monotonic()
        if now - self._last_sweep >= _SWEEP_S:
            self._last_sweep = now
            self.forget_idle(now)
        raw_device = _device_level(msg.topic)
        if self.part_n > 1 and not self.owns(raw_device):
            p.ack(msg)  # another instance's device: its own session holds this chunk
            return
        try:
            device_id = parse_stream_topic(msg.topic, p.prefix)
            chunk = decode_stream(
                msg.payload,
                device_id,
                max_bytes=p.cfg.limits.max_payload_bytes,
                max_chunk_s=self.cfg.max_chunk_s,
                min_fs=self.cfg.min_fs,
                max_fs=self.cfg.max_fs,
            )
            peak = float(np.abs(chunk.samples_mv).max())
            if peak > p.cfg.limits.max_abs_sample:
                raise PayloadError("out_of_range", f"|sample| {peak:.6g} > limits.max_abs_sample")
            dev = self._device(chunk, now)
        except PayloadError as e:
            self._reject(msg, Reject(raw_device, e.code, e.reason, msg.received_at, msg.payload))
            return
        m.chunks_received.inc()
        self.chunk_count += 1
        self.last_chunk_at = now
        dev.last_seen = now
        dev.last_count = self.chunk_count
        if dev.flushed:  # back after being flushed for idleness: start afresh
            dev.fe = FrontEnd(self.seg, chunk.fs)
            dev.flushed = False
        dev.held.append(Held(_strip(msg), chunk.end))
        self.held += 1
        keep_from = dev.fe.needed_from()
        try:
            out = dev.fe.feed(chunk.start, chunk.samples_mv, chunk.fs)
        except DataError as e:
            dev.held.pop()
            self.held -= 1
            self._reject(
                msg, Reject(raw_device, "bad_stream", e.reason, msg.received_at, msg.payload)
            )
            return
        dev.anchor = (chunk.start, chunk.ts)
        self._emit(dev, out, keep_from, msg.received_at)
        self._release(dev)
        if self.held > self.held_cap:
            self._relieve()

    def _emit(self, dev: Device, out: FrontEndOutput, keep_from: int, received_at: float) -> None:
        """Quality changes out, beats into the batcher."""
        p = self.p
        for change in out.quality_changes:
            self._quality(dev, change.state, int(change.since), change.reason)
        beats = out.beats
        n = len(beats.r_index)
        if n:
            r = np.asarray(beats.r_index, dtype=np.int64)
            token = Beats(
                owner=self,
                device=dev,
                r_index=r,
                ts=dev.ts_of(r),
                rr_s=np.asarray(beats.rr_s, dtype=np.float64),
                alertable=np.array([dev.state_at(int(i)) == "good" for i in r], dtype=bool),
                keep_from=min(keep_from, int(r[0])),
                received_at=received_at,
                rows_left=n,
                scores=np.empty(n, np.float32) if p.cfg.alerts.publish_scores else None,
            )
            ctx = np.asarray(beats.context, dtype=np.float32) if self.context_size else None
            dev.open_beats.append(token)
            self.open_beats += 1
            p.batcher.put(BeatRows(np.asarray(beats.windows, dtype=np.float32), ctx), token)
            p.admitted(n)

    def _device(self, chunk: Chunk, now: float) -> Device:
        dev = self.devices.get(chunk.device_id)
        if dev is not None:
            return dev
        if len(self.devices) >= self.cfg.max_devices:
            self.forget_idle(now)
            if len(self.devices) >= self.cfg.max_devices:
                raise PayloadError(
                    "bad_stream", f"device limit reached ({self.cfg.max_devices} streams)"
                )
        try:
            fe = FrontEnd(self.seg, chunk.fs)
        except DataError as e:  # an fs the front end cannot filter
            raise PayloadError("bad_stream", e.reason) from None
        dev = Device(chunk.device_id, fe, now)
        self.devices[chunk.device_id] = dev
        self.p.metrics.stream_devices.set(len(self.devices))
        return dev

    def _reject(self, msg: Message, reject: Reject) -> None:
        self.p.metrics.rejected.inc(code=reject.code)
        log.info("rejected", device_id=reject.device_id, code=reject.code, reason=reject.reason)
        self.open_rejects += 1

        def done() -> None:
            self.open_rejects -= 1
            self.p.ack(msg)

        self.p.publish(
            f"{self.p.prefix}/{reject.device_id}/rejected", reject.to_json(), on_done=done
        )

    def _quality(self, dev: Device, state: str, since: int, reason: str) -> None:
        """Record and publish (QoS 1, retained) one quality change."""
        dev.quality.append((since, state))
        dev.quality.sort(key=lambda q: q[0])
        if len(dev.quality) > 64:  # the states of beats long scored are no longer asked for
            del dev.quality[:-64]
        q = Quality(dev.device_id, state, since, float(dev.ts_of(np.array([since]))[0]), reason)
        self.p.metrics.quality_changes.inc(state=state)
        log.info("stream_quality", device_id=dev.device_id, state=state, since=since, reason=reason)
        dev.open_publishes += 1
        self.p.publish(
            f"{self.p.prefix}/{dev.device_id}/quality",
            q.to_json(),
            retain=True,
            on_done=functools.partial(self._quality_published, dev),
        )

    def _quality_published(self, dev: Device) -> None:
        dev.open_publishes -= 1
        self._release(dev)

    # ------------------------------------------------------------------ results

    def scored_run(
        self,
        segs: Sequence[Segment[Token]],
        scores: Scores,
        model: Model,
        threshold: float,
        now: float,
    ) -> None:
        """Segment by segment: beat alerts are few (one per anomalous beat, not per window)."""
        for seg in segs:
            self.scored(seg, scores, model, threshold, now)

    def scored(
        self, seg: Segment[Token], scores: Scores, model: Model, threshold: float, now: float
    ) -> None:
        b = seg.token
        assert isinstance(b, Beats)
        p, m = self.p, self.p.metrics
        dev = b.device
        rows = slice(seg.offset, seg.offset + seg.count)
        beats = slice(seg.start, seg.stop)
        p.feed_storm(
            dev.device_id, int(scores.finite[rows].sum()), int(scores.anomalous[rows].sum())
        )
        mask = scores.anomalous[rows] & b.alertable[beats]
        if p.policy.active:
            mask = p.policy.admit(dev.device_id, mask, now)
        m.beats_scored.inc(seg.count)
        if b.scores is not None:
            b.scores[beats] = scores.score[rows]
        hits = np.flatnonzero(mask)
        if hits.size:
            info = model.info
            pvs = scores.p_value
            pv = [None] * hits.size if pvs is None else pvs[rows][hits].tolist()
            for i, score, peak, pval in zip(
                hits.tolist(),
                scores.score[rows][hits].tolist(),
                scores.peak_index[rows][hits].tolist(),
                pv,
                strict=True,
            ):
                j = seg.start + i
                rr = float(b.rr_s[j])
                rr_s = rr if np.isfinite(rr) and rr > 0 else None
                published_at = time.time()
                alert = Alert(
                    device_id=dev.device_id,
                    seq=int(b.r_index[j]),
                    ts=float(b.ts[j]),
                    score=score,
                    threshold=threshold,
                    model=info.name,
                    model_version=info.version,
                    peak_index=peak,
                    received_at=b.received_at,
                    published_at=published_at,
                    p_value=pval,
                    source="stream",
                    rr_s=rr_s,
                    hr_bpm=None if rr_s is None else 60.0 / rr_s,
                )
                self._publish(b, f"{p.prefix}/{dev.device_id}/alert", alert.to_json())
                m.latency_seconds.observe(published_at - b.received_at)
            m.alerts.inc(hits.size)
        b.rows_left -= seg.count
        if b.rows_left == 0 and b.scores is not None:
            report = BeatScores(
                device_id=dev.device_id,
                seqs=tuple(b.r_index.tolist()),
                ts=tuple(b.ts.tolist()),
                scores=tuple(v if math.isfinite(v) else None for v in b.scores.tolist()),
                threshold=threshold,
                model=model.info.name,
                model_version=model.info.version,
                received_at=b.received_at,
                published_at=time.time(),
            )
            self._publish(b, f"{p.prefix}/{dev.device_id}/score", report.to_json())
        self._check_done(b)

    def failed(self, seg: Segment[Token], error: Exception) -> None:
        """A failed batch: these beats get no outputs (logged by the service); their chunks are
        released as if scored, so one bad batch cannot hold a device's stream forever."""
        b = seg.token
        assert isinstance(b, Beats)
        if b.rows_left <= 0:
            return
        b.rows_left = 0
        b.scores = None
        log.error("beats_failed", device_id=b.device.device_id, seqs=b.r_index[:8].tolist())
        self._check_done(b)

    def _publish(self, b: Beats, topic: str, payload: bytes) -> None:
        """A QoS 1 output of these beats, counted only once queued (a failure leaves b whole)."""
        b.publishes_left += 1
        try:
            self.p.publish(topic, payload, on_done=functools.partial(self._published, b))
        except BaseException:
            b.publishes_left -= 1
            raise

    def _published(self, b: Beats) -> None:
        b.publishes_left -= 1
        self._check_done(b)

    def _check_done(self, b: Beats) -> None:
        if b.rows_left == 0 and b.publishes_left == 0:
            dev = b.device
            dev.open_beats.remove(b)
            self.open_beats -= 1
            self._release(dev)

    # ------------------------------------------------------------------ acknowledgement

    def _release(self, dev: Device) -> None:
        """Acknowledge every held chunk whose samples no open beat and no future beat needs."""
        if dev.open_publishes or not dev.held:
            return
        bound = dev.fe.needed_from()
        for b in dev.open_beats:
            bound = min(bound, b.keep_from)
        if dev.held[0].end > bound and all(h.end > bound for h in dev.held):
            return
        keep: deque[Held] = deque()
        for h in dev.held:
            if h.end <= bound:
                self.p.ack(h.msg)
            else:
                keep.append(h)
        self.held -= len(dev.held) - len(keep)
        dev.held = keep

    def _relieve(self) -> None:
        """Held chunks near the Receive Maximum: acknowledge the oldest chunk of the device
        holding most. Its samples stay in the front end (nothing is lost while the daemon runs);
        only a restart could then miss beats around it. Counted and logged: size
        mqtt.receive_maximum (docs/DESIGN.md) so that this never happens."""
        while self.held > self.held_cap:
            dev = max(self.devices.values(), key=lambda d: len(d.held))
            if not dev.held:
                return
            h = dev.held.popleft()
            self.p.ack(h.msg)
            self.held -= 1
            self.forced_acks += 1
            self.p.metrics.stream_forced_acks.inc()
            if self.forced_acks == 1 or self.forced_acks % 1000 == 0:
                log.warning(
                    "stream_inflight_limit",
                    held=self.held,
                    receive_maximum=self.p.cfg.mqtt.receive_maximum,
                    forced_acks=self.forced_acks,
                    device_id=dev.device_id,
                )

    def forget_idle(self, now: float) -> int:
        """Devices silent for idle_forget_s: the front end is flushed (the detector decides on
        what is left, as offline at the end of a record) and those beats scored; once none is
        open the held chunks are acknowledged and the device forgotten (it re-learns when it
        returns). Returns how many were forgotten."""
        idle_s = self.cfg.idle_forget_s
        cutoff = now - idle_s
        if self.p.bridge is not None and self.p.bridge.paused:
            return 0  # backpressure: devices are not silent, we are not reading
        # Silent by the clock is not enough: after the event loop stalls (or the daemon was
        # away) every device looks silent until the backlog is read. A device is idle when
        # the others sent plenty since its last chunk, or when no device sent anything lately.
        quiet = now - self.last_chunk_at >= idle_s / 2
        plenty = 2 * len(self.devices)
        gone = 0
        for dev in [d for d in self.devices.values() if d.last_seen < cutoff]:
            if dev.open_beats or dev.open_publishes:
                continue
            if not quiet and self.chunk_count - dev.last_count < plenty:
                continue
            if not dev.flushed:
                dev.flushed = True
                out = dev.fe.flush()
                if len(out.beats.r_index):
                    self._emit(dev, out, 0, time.time())
                    continue  # forgotten on a later sweep, once these are published
            for h in dev.held:
                self.p.ack(h.msg)
            self.held -= len(dev.held)
            del self.devices[dev.device_id]
            gone += 1
            log.info("stream_forgotten", device_id=dev.device_id, idle_s=round(now - dev.last_seen))
        if gone:
            self.p.metrics.stream_devices.set(len(self.devices))
        return gone

    async def background(self) -> None:
        """Look for idle devices now and then even when no message comes."""
        while True:
            await asyncio.sleep(min(_SWEEP_S, self.cfg.idle_forget_s / 4))
            self._last_sweep = time.monotonic()
            self.forget_idle(self._last_sweep)


def _device_level(topic: str) -> str:
    parts = topic.split("/")
    return parts[-2] if len(parts) >= 3 else ""


def _strip(msg: Message) -> Message:
    """The message without its payload: held chunks keep only what the ack needs."""
    return Message(msg.topic, b"", msg.qos, msg.mid, msg.received_at, msg.generation)


def segmentation_of(model: Model) -> Segmentation:
    """The model's `ecg.segmentation`; ConfigError when a model without it is asked to serve
    streams, or its window length disagrees with the model's."""
    raw = model.info.metadata.get("ecg.segmentation", "").strip()
    if not raw:
        raise ConfigError(
            f"streams.enabled needs a stream model (ecg.segmentation metadata); "
            f"{model.info.path} has none"
        )
    try:
        seg = Segmentation.from_json(raw)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{model.info.path}: bad ecg.segmentation: {e}") from None
    if seg.window_length != model.info.window_length:
        raise ConfigError(
            f"{model.info.path}: ecg.segmentation window_length {seg.window_length} != "
            f"ecg.window_length {model.info.window_length}"
        )
    return seg
