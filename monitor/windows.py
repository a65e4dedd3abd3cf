"""Heartbeat windows as an input kind: ingest -> batcher -> alerts -> acknowledgement.

A window message is acknowledged once every window in it is scored and every output it caused
(alerts, the score report, or its reject) is acknowledged by the broker (DESIGN.md, Delivery).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from monitor.alerts import AlertEncoder, Reject, ScoreReport
from monitor.batcher import Segment
from monitor.engine import Model
from monitor.errors import RejectCode
from monitor.ingest import Ingest
from monitor.mqtt import Message
from monitor.pipeline import Pipeline, Token
from monitor.scorer import Scores
from monitor.wire import Frame

log = structlog.get_logger("monitor.windows")


@dataclass(slots=True, eq=False)
class Delivery:
    """Bookkeeping of one incoming message: acked when no window or publish is outstanding."""

    owner: WindowInput
    message: Message
    frame: Frame | None
    windows_left: int
    publishes_left: int
    scores: np.ndarray | None = None
    on_published: Callable[[], None] | None = None  # one callback for all its alerts


class WindowInput:
    """`<prefix>/+/window`: each message one Frame of windows of the model's length."""

    def __init__(self, pipe: Pipeline, window_length: int) -> None:
        self.p = pipe
        cfg = pipe.cfg
        self.ingest = Ingest(
            cfg.mqtt.topic_prefix,
            window_length,
            cfg.limits.max_payload_bytes,
            cfg.limits.max_windows_per_message,
            cfg.limits.max_abs_sample,
        )
        self.open_deliveries = 0
        self._tail = "/window"
        self._encoder: AlertEncoder | None = None

    @property
    def topic_filter(self) -> str:
        return f"{self.p.prefix}/+/window"

    def accepts(self, topic: str) -> bool:
        return topic.endswith(self._tail)

    def busy(self) -> int:
        return self.open_deliveries

    async def background(self) -> None:
        """Nothing to do between messages."""

    def on_message(self, msg: Message) -> None:
        """Decode and hand to the batcher (or publish the reject)."""
        p, m = self.p, self.p.metrics
        result = self.ingest(msg.topic, msg.payload, msg.received_at)
        if isinstance(result, Reject):
            d = Delivery(self, msg, None, windows_left=0, publishes_left=0)
            self.open_deliveries += 1
            self._reject(d, result)
            return
        frame = result
        cap = p.cfg.limits.queue_windows
        if msg.qos == 0 and p.batcher.queued + frame.count > cap:
            m.dropped.inc(frame.count)
            return
        m.windows_received.inc(frame.count)
        scores = np.empty(frame.count, np.float32) if p.cfg.alerts.publish_scores else None
        d = Delivery(self, msg, frame, frame.count, 0, scores)
        self.open_deliveries += 1
        p.batcher.put(frame, d)
        p.admitted(frame.count)

    def _reject(self, d: Delivery, reject: Reject) -> None:
        """Publish a reject of d's message (its payload, cut to the broker's packet limit)."""
        self.p.metrics.rejected.inc(code=reject.code)
        log.info("rejected", device_id=reject.device_id, code=reject.code, reason=reject.reason)
        topic = self.ingest.reject_topic(reject)
        self._publish(d, topic, reject.to_json(self.p.max_payload(topic)))

    def _publish(self, d: Delivery, topic: str, payload: bytes) -> None:
        """A QoS 1 output of d's message; d is acknowledged once every output has its PUBACK.
        Counted only once it is queued, so a failure building or queueing it leaves d whole."""
        d.publishes_left += 1
        try:
            self.p.publish(topic, payload, on_done=functools.partial(self._published, d))
        except BaseException:
            d.publishes_left -= 1
            raise

    def _reject_of(self, d: Delivery, code: RejectCode, reason: str) -> Reject:
        device_id = d.frame.device_id if d.frame is not None else ""
        return Reject(device_id, code, reason, d.message.received_at, d.message.payload)

    def failed(self, seg: Segment[Token], error: Exception) -> None:
        """Reject (internal_error, with the payload) a message the failed batch leaves open."""
        d = seg.token
        assert isinstance(d, Delivery)
        if d.windows_left <= 0:
            return  # finished before the failure
        d.windows_left = 0
        d.scores = None
        reason = f"the daemon failed on this message ({type(error).__name__}); see its log"
        self._reject(d, self._reject_of(d, "internal_error", reason))

    def scored_run(
        self,
        segs: Sequence[Segment[Token]],
        scores: Scores,
        model: Model,
        threshold: float,
        now: float,
    ) -> None:
        """The run's segments at once, as `scored` on each would settle them: per-segment counts
        from one `reduceat`, every alert of the run encoded together and framed into one
        write, then each message's scores, rejects and acknowledgement. The one difference in
        order: a storm notice goes out ahead of the run's alerts instead of between them.

        Segment by segment instead when the alert policy keeps per-device state
        (min_consecutive, cooldown), and when encoding the run fails (an alert the encoder
        refuses): then the messages before the failing one are settled as before and the
        batch failure rejects the rest."""
        p = self.p
        if p.policy.active or len(segs) == 1:
            for seg in segs:
                self.scored(seg, scores, model, threshold, now)
            return
        lo = segs[0].offset
        hi = segs[-1].offset + segs[-1].count  # a run's segments are consecutive batch rows
        starts = np.fromiter((seg.offset for seg in segs), np.intp, len(segs)) - lo
        finite, anomalous = scores.finite[lo:hi], scores.anomalous[lo:hi]
        n_finite = np.add.reduceat(finite, starts, dtype=np.intp).tolist()
        n_anomalous = np.add.reduceat(anomalous, starts, dtype=np.intp).tolist()
        hits = np.flatnonzero(anomalous)  # rows of the run
        per_segment: list[int] = []
        seqs: list[int] = []
        payloads: list[bytes] = []
        published_at = 0.0
        if hits.size:
            try:
                per_segment, seqs, payloads, published_at = self._encode_run(
                    segs, starts, hits, lo=lo, scores=scores, model=model, threshold=threshold
                )
            except Exception:
                for seg in segs:  # settles up to the failing message, which raises
                    self.scored(seg, scores, model, threshold, now)
                return
        for seg, n_f, n_a in zip(segs, n_finite, n_anomalous, strict=True):
            d = seg.token
            assert isinstance(d, Delivery) and d.frame is not None
            p.feed_storm(d.frame.device_id, n_f, n_a)
        if payloads:
            self._publish_run(segs, per_segment, seqs, payloads, published_at)
        for seg, n_f in zip(segs, n_finite, strict=True):
            d = seg.token
            assert isinstance(d, Delivery) and d.frame is not None
            if d.scores is not None:
                d.scores[seg.start : seg.stop] = scores.score[seg.offset : seg.offset + seg.count]
            if n_f < seg.count:
                bad = ~scores.finite[seg.offset : seg.offset + seg.count]
                self._out_of_range(d, d.frame, seg.start + np.flatnonzero(bad))
            d.windows_left -= seg.count
            if d.windows_left == 0:
                if d.scores is not None:
                    self._publish_scores(d, model, threshold)
                self._check_done(d)

    def _encoder_for(self, model: Model, threshold: float) -> AlertEncoder:
        info, enc = model.info, self._encoder
        if (
            enc is None
            or (enc.model, enc.model_version) != (info.name, info.version)
            or enc.threshold != threshold
        ):
            enc = self._encoder = AlertEncoder(threshold, info.name, info.version)
        return enc

    def _encode_run(
        self,
        segs: Sequence[Segment[Token]],
        starts: np.ndarray,
        hits: np.ndarray,
        *,
        lo: int,
        scores: Scores,
        model: Model,
        threshold: float,
    ) -> tuple[list[int], list[int], list[bytes], float]:
        """The alerts of a run's hit rows, without side effects: alerts per segment, their seqs
        and payloads, and the published_at they carry."""
        which = np.searchsorted(starts, hits, side="right") - 1  # the segment of each hit
        per_segment = np.bincount(which, minlength=len(segs)).tolist()
        rows = hits - starts[which]  # row within its segment
        devices: list[str] = []
        seqs: list[int] = []
        ts: list[float] = []
        received: list[float] = []
        pos = 0
        for seg, k in zip(segs, per_segment, strict=True):
            if not k:
                continue
            d = seg.token
            assert isinstance(d, Delivery) and d.frame is not None
            frame = d.frame
            at = rows[pos : pos + k] + seg.start
            pos += k
            devices += [frame.device_id] * k
            seqs += (at + frame.seq).tolist()
            ts += [frame.ts] * k if frame.fs is None else [frame.window_ts(r) for r in at.tolist()]
            received += [d.message.received_at] * k
        batch_rows = hits + lo
        published_at = time.time()
        payloads = self._encoder_for(model, threshold).encode(
            devices,
            seqs=seqs,
            ts=ts,
            scores=scores.score[batch_rows].tolist(),
            peaks=scores.peak_index[batch_rows].tolist(),
            received_at=received,
            published_at=published_at,
            p_values=None if scores.p_value is None else scores.p_value[batch_rows].tolist(),
        )
        return per_segment, seqs, payloads, published_at

    def _publish_run(
        self,
        segs: Sequence[Segment[Token]],
        per_segment: list[int],
        seqs: list[int],
        payloads: list[bytes],
        published_at: float,
    ) -> None:
        """The run's alerts in one framed write; each message counts its own once queued."""
        assert self.p.bridge is not None
        m = self.p.metrics
        items: list[tuple[bytes, bytes, Callable[[], None]]] = []
        received: list[float] = []
        owners: list[tuple[Delivery, int, int]] = []
        pos = 0
        for seg, k in zip(segs, per_segment, strict=True):
            if not k:
                continue
            d = seg.token
            assert isinstance(d, Delivery) and d.frame is not None
            if d.on_published is None:
                d.on_published = functools.partial(self._published, d)
            topic = f"{self.p.prefix}/{d.frame.device_id}/alert".encode()
            done = d.on_published
            items += [(topic, payload, done) for payload in payloads[pos : pos + k]]
            received += [d.message.received_at] * k
            owners.append((d, k, seqs[pos]))
            pos += k
        self.p.bridge.publish_many(items)
        for d, k, first_seq in owners:
            d.publishes_left += k  # counted once queued, as `_publish` does
            assert d.frame is not None
            log.debug("alerts", device_id=d.frame.device_id, first_seq=first_seq, count=k)
        m.latency_seconds.observe_many(published_at - np.asarray(received))
        m.alerts.inc(len(items))

    def scored(
        self, seg: Segment[Token], scores: Scores, model: Model, threshold: float, now: float
    ) -> None:
        d = seg.token
        assert isinstance(d, Delivery) and d.frame is not None
        frame = d.frame
        p = self.p
        rows = slice(seg.offset, seg.offset + seg.count)
        p.feed_storm(
            frame.device_id, int(scores.finite[rows].sum()), int(scores.anomalous[rows].sum())
        )
        mask = scores.anomalous[rows]
        if p.policy.active:
            mask = p.policy.admit(frame.device_id, mask, now)
        hits = np.flatnonzero(mask)
        if hits.size:
            self._alerts(d, seg, hits, scores, model=model, threshold=threshold)
        if d.scores is not None:
            d.scores[seg.start : seg.stop] = scores.score[rows]
        if not scores.finite[rows].all():
            self._out_of_range(d, frame, seg.start + np.flatnonzero(~scores.finite[rows]))
        d.windows_left -= seg.count
        if d.windows_left == 0:
            if d.scores is not None:
                self._publish_scores(d, model, threshold)
            self._check_done(d)

    def _alerts(
        self,
        d: Delivery,
        seg: Segment[Token],
        hits: np.ndarray,
        scores: Scores,
        *,
        model: Model,
        threshold: float,
    ) -> None:
        """This segment's alerts, encoded together and framed into one socket write."""
        rows = slice(seg.offset, seg.offset + seg.count)
        assert d.frame is not None and self.p.bridge is not None
        frame, info, m = d.frame, model.info, self.p.metrics
        enc = self._encoder
        if (
            enc is None
            or (enc.model, enc.model_version) != (info.name, info.version)
            or enc.threshold != threshold
        ):
            enc = self._encoder = AlertEncoder(threshold, info.name, info.version)
        k = int(hits.size)
        at = hits + seg.start
        ts = [frame.ts] * k if frame.fs is None else [frame.window_ts(r) for r in at.tolist()]
        received = d.message.received_at
        published_at = time.time()
        payloads = enc.encode(
            [frame.device_id] * k,
            seqs=(at + frame.seq).tolist(),
            ts=ts,
            scores=scores.score[rows][hits].tolist(),
            peaks=scores.peak_index[rows][hits].tolist(),
            received_at=[received] * k,
            published_at=published_at,
            p_values=None if scores.p_value is None else scores.p_value[rows][hits].tolist(),
        )
        if d.on_published is None:
            d.on_published = functools.partial(self._published, d)
        topic = f"{self.p.prefix}/{frame.device_id}/alert".encode()
        self.p.bridge.publish_many([(topic, payload, d.on_published) for payload in payloads])
        d.publishes_left += k  # counted once queued, as `_publish` does
        m.latency_seconds.observe_many(np.full(k, published_at - received))
        m.alerts.inc(k)
        log.debug("alerts", device_id=frame.device_id, first_seq=frame.seq + int(at[0]), count=k)

    def _out_of_range(self, d: Delivery, frame: Frame, rows: np.ndarray) -> None:
        """Windows the model scored NaN/inf: neither alert nor normal, so rejected."""
        seqs = ", ".join(str(frame.seq + int(r)) for r in rows[:8])
        more = f" and {rows.size - 8} more" if rows.size > 8 else ""
        reason = f"score not finite (the model overflowed) for window seq {seqs}{more}"
        self._reject(d, self._reject_of(d, "out_of_range", reason))

    def _publish_scores(self, d: Delivery, model: Model, threshold: float) -> None:
        assert d.frame is not None and d.scores is not None
        frame = d.frame
        report = ScoreReport(
            device_id=frame.device_id,
            seq=frame.seq,
            ts=frame.ts,
            scores=tuple(s if math.isfinite(s) else None for s in d.scores.tolist()),
            threshold=threshold,
            model=model.info.name,
            model_version=model.info.version,
            received_at=d.message.received_at,
            published_at=time.time(),
        )
        topic = f"{self.p.prefix}/{frame.device_id}/score"
        for part in report.parts(self.p.max_payload(topic), frame.window_ts):
            self._publish(d, topic, part)

    def _published(self, d: Delivery) -> None:
        d.publishes_left -= 1
        self._check_done(d)

    def _check_done(self, d: Delivery) -> None:
        if d.windows_left == 0 and d.publishes_left == 0:
            self.p.ack(d.message)
            self.open_deliveries -= 1
