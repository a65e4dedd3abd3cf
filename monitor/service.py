"""`ecg-monitor run --config FILE`: the daemon (MQTT in, batched ONNX inference, alerts out).

Lifecycle: config and model are loaded and checked before anything connects (exit code 3 and a
one-line reason if either is bad); READY after the model is warm and the subscription is
acknowledged; SIGTERM/SIGINT drain (everything received is scored and published) within
`drain_timeout_s`, a second SIGINT forces; SIGHUP reloads the model.
Exit codes: 0 clean (drained), 1 drain incomplete or forced or fatal error, 3 start-up failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import math
import signal
import ssl
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from monitor.alerts import AlertEncoder, AlertPolicy, Reject, ScoreReport, Status
from monitor.batcher import Batch, Batcher
from monitor.config import Config, load_config
from monitor.engine import Inference, Model, load_model
from monitor.errors import ConfigError, ModelLoadError, MonitorError, RejectCode
from monitor.ingest import Ingest
from monitor.log import setup_logging
from monitor.metrics import Metrics, MetricsServer
from monitor.mqtt import Message, MqttBridge
from monitor.scorer import Scores, score_batch
from monitor.storm import Storm, StormGuard, calibrated_fpr
from monitor.systemd import Notifier
from monitor.wire import Frame

log = structlog.get_logger("monitor.service")

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_STARTUP = 3


@dataclass(slots=True, eq=False)
class Delivery:
    """Bookkeeping of one incoming message: acked when no window or publish is outstanding."""

    message: Message
    frame: Frame | None
    windows_left: int
    publishes_left: int
    scores: np.ndarray | None = None
    on_published: Callable[[], None] | None = None  # one callback for all its alerts


class Service:
    """The running daemon. Everything but inference runs on the event loop thread."""

    def __init__(self, cfg: Config, model: Model, notifier: Notifier | None = None) -> None:
        batch = cfg.batch.for_provider(model.info.provider, cfg.limits.queue_windows)
        self.cfg = cfg = dataclasses.replace(cfg, batch=batch)  # "auto" sizes resolved
        self.model = model
        self.notifier = notifier or Notifier()
        self.started_at = time.time()
        self.batcher: Batcher[Delivery] = Batcher(
            cfg.batch.max_batch, cfg.batch.max_wait_ms / 1000.0
        )
        self.metrics = Metrics(queue_depth=lambda: float(self.batcher.queued))
        self.metrics.set_model(model.info.name, model.info.version, model.info.provider)
        self.ingest = Ingest(
            cfg.mqtt.topic_prefix,
            model.info.window_length,
            cfg.limits.max_payload_bytes,
            cfg.limits.max_windows_per_message,
            cfg.limits.max_abs_sample,
        )
        self.storms = StormGuard(
            calibrated_fpr(model.info.metadata),
            device_windows=cfg.alerts.storm_windows,
            fleet_windows=cfg.alerts.storm_fleet_windows,
            min_share=cfg.alerts.storm_share,
        )
        self.storm: Storm | None = None  # the latest, carried in the status
        self.policy = AlertPolicy(cfg.alerts.min_consecutive, cfg.alerts.cooldown_s)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.should_exit = False
        self.force_exit = False
        self.draining = False
        self.open_deliveries = 0
        self.exit_code = EXIT_OK
        self._stop = asyncio.Event()
        self._reloading = False
        self._background: set[asyncio.Task[bool]] = set()
        self._inflight: asyncio.Queue[
            tuple[Batch[Delivery], Model, asyncio.Future[Inference]] | None
        ]
        self.bridge: MqttBridge | None = None
        self._prefix = cfg.mqtt.topic_prefix
        self._encoder: AlertEncoder | None = None
        self._alert_topics: dict[str, bytes] = {}

    # ------------------------------------------------------------------ lifecycle

    def threshold(self, model: Model) -> float:
        override = self.cfg.model.threshold_override
        return model.info.threshold if override is None else override

    def status(self, state: str) -> Status:
        info = self.model.info
        storm = self.storm.to_dict() if self.storm is not None else None
        return Status(
            state, self.cfg.service.instance_id, info.name, info.version, self.started_at, storm
        )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._inflight = asyncio.Queue(maxsize=self.cfg.batch.pipeline_depth)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload, "SIGHUP")
        server: MetricsServer | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            if self.cfg.metrics.port:
                server = MetricsServer(self.metrics, self.cfg.metrics.host, self.cfg.metrics.port)
                try:
                    await server.start()
                except OSError as e:
                    raise ConfigError(
                        f"metrics port {self.cfg.metrics.host}:{self.cfg.metrics.port}: {e}"
                    ) from None
            try:
                self.bridge = MqttBridge(
                    self.cfg.mqtt,
                    subscription=self.cfg.mqtt.subscription,
                    will=(self.cfg.status_topic, self.status("offline").to_json()),
                    on_message=self._on_message,
                    on_online=self._on_online,
                    on_refused=self.metrics.outputs_refused.inc,
                )
            except (ssl.SSLError, OSError, ValueError) as e:  # TLS files paho cannot use
                raise ConfigError(f"mqtt: {e}") from None
            producer = asyncio.create_task(self._produce(), name="batches")
            consumer = asyncio.create_task(self._consume(), name="results")
            tasks = [producer, consumer]
            tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
            if self.cfg.model.watch_s > 0:
                tasks.append(asyncio.create_task(self._watch_model(), name="model-watch"))
            online = asyncio.create_task(self.bridge.start())
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait({online, stop}, return_when=asyncio.FIRST_COMPLETED)
            if online.done() and online.exception() is None:
                self.notifier.ready(f"scoring with {self.model.info.name}")
                log.info(
                    "ready",
                    instance_id=self.cfg.service.instance_id,
                    subscription=self.cfg.mqtt.subscription,
                    model=self.model.info.name,
                    model_version=self.model.info.version,
                    provider=self.model.info.provider,
                    max_batch=self.cfg.batch.max_batch,
                    pipeline_depth=self.cfg.batch.pipeline_depth,
                )
            await stop
            online.cancel()
            with contextlib.suppress(BaseException):
                await online
            await self._drain(producer, consumer)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            if self.bridge is not None:
                await self.bridge.close()
            if server is not None:
                await server.close()
            self.executor.shutdown(wait=False, cancel_futures=True)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info(
            "stopped",
            exit_code=self.exit_code,
            windows_received=int(self.metrics.windows_received.value()),
            windows_scored=int(self.metrics.windows_scored.value()),
            alerts=int(self.metrics.alerts.value()),
        )
        return self.exit_code

    def handle_exit(self, sig: int) -> None:
        """First SIGTERM/SIGINT: drain. A second SIGINT: stop now."""
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
            log.warning("force_exit")
        self.should_exit = True
        self._stop.set()

    async def _drain(self, producer: asyncio.Task[None], consumer: asyncio.Task[None]) -> None:
        assert self.bridge is not None
        self.draining = True
        timeout = self.cfg.service.drain_timeout_s
        self.notifier.stopping("draining")
        self.notifier.extend_timeout(timeout + 5.0)
        log.info("draining", open_messages=self.open_deliveries, timeout_s=timeout)
        self.batcher.close()
        self.bridge.resume_reading()  # PUBACKs must still come in; new windows are ignored
        deadline = time.monotonic() + timeout
        while (self.open_deliveries > 0 or not consumer.done()) and not self.force_exit:
            if time.monotonic() >= deadline:
                break
            if consumer.done() and consumer.exception() is not None:
                break
            await asyncio.sleep(0.005)
        drained = self.open_deliveries == 0 and consumer.done()
        if not drained:
            self.exit_code = EXIT_INCOMPLETE
            log.warning(
                "drain_incomplete",
                open_messages=self.open_deliveries,
                forced=self.force_exit,
                note="unacknowledged windows are redelivered to the next session",
            )
        else:
            log.info("drained")
        if self.bridge.connected and not self.force_exit:
            self.bridge.publish(
                self.cfg.status_topic, self.status("offline").to_json(), qos=1, retain=True
            )
            await self.bridge.wait_published(min(2.0, max(0.1, deadline - time.monotonic())))

    def _fatal(self, reason: str) -> None:
        log.error("fatal", reason=reason)
        self.exit_code = EXIT_INCOMPLETE
        self.force_exit = True
        self._stop.set()

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return
        while True:  # from the event loop itself: a stuck loop stops the pings
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ incoming

    def _on_online(self, session_present: bool) -> None:
        assert self.bridge is not None
        self.metrics.up.set(1)
        self.bridge.publish(
            self.cfg.status_topic, self.status("online").to_json(), qos=1, retain=True
        )

    def _on_message(self, msg: Message) -> None:
        """Called by the bridge for each message, on the loop: decode and hand to the batcher."""
        assert self.bridge is not None
        if self.draining:
            return  # not acked: the broker redelivers it to the next session
        result = self.ingest(msg.topic, msg.payload, msg.received_at)
        if isinstance(result, Reject):
            d = Delivery(msg, None, windows_left=0, publishes_left=0)
            self.open_deliveries += 1
            self._reject(d, result)
            return
        frame = result
        cap = self.cfg.limits.queue_windows
        if msg.qos == 0 and self.batcher.queued + frame.count > cap:
            self.metrics.dropped.inc(frame.count)
            return
        self.metrics.windows_received.inc(frame.count)
        scores = np.empty(frame.count, np.float32) if self.cfg.alerts.publish_scores else None
        d = Delivery(msg, frame, frame.count, 0, scores)
        self.open_deliveries += 1
        self.batcher.put(frame, d)
        if self.batcher.queued >= cap:
            self.bridge.pause_reading()

    def _reject(self, d: Delivery, reject: Reject) -> None:
        """Publish a reject of d's message (its payload, cut to the broker's packet limit)."""
        assert self.bridge is not None
        self.metrics.rejected.inc(code=reject.code)
        log.info("rejected", device_id=reject.device_id, code=reject.code, reason=reject.reason)
        topic = self.ingest.reject_topic(reject)
        self._publish(d, topic, reject.to_json(self.bridge.max_payload(topic)))

    def _publish(self, d: Delivery, topic: str, payload: bytes) -> None:
        """A QoS 1 output of d's message; d is acknowledged once every output has its PUBACK.
        Counted only once it is queued, so a failure building or queueing it leaves d whole."""
        assert self.bridge is not None
        d.publishes_left += 1
        try:
            self.bridge.publish(
                topic, payload, qos=1, on_done=functools.partial(self._published, d)
            )
        except BaseException:
            d.publishes_left -= 1
            raise

    # ------------------------------------------------------------------ pipeline

    async def _produce(self) -> None:
        """Batches to the inference thread, up to pipeline_depth in flight."""
        loop = asyncio.get_running_loop()
        resume_at = self.cfg.limits.queue_windows // 2
        while True:
            batch = await self.batcher.get()
            if batch is None:
                break
            if self.bridge is not None and self.bridge.paused and self.batcher.queued <= resume_at:
                self.bridge.resume_reading()
            model = self.model
            fut = loop.run_in_executor(self.executor, model.run, batch.windows)
            await self._inflight.put((batch, model, fut))
        await self._inflight.put(None)

    async def _consume(self) -> None:
        """Results in batch order: score, alert, publish."""
        while True:
            item = await self._inflight.get()
            if item is None:
                return
            batch, model, fut = item
            try:
                inference = await fut
            except Exception as e:
                self._fatal(f"inference failed: {type(e).__name__}: {e}")
                raise
            try:
                self._handle(batch, model, inference)
            except Exception as e:  # a bug must not stop the pipeline for everyone
                self._fail_batch(batch, e)

    def _fail_batch(self, batch: Batch[Delivery], error: Exception) -> None:
        """Reject (internal_error, with the payload) every message this batch leaves open."""
        self.metrics.batch_failures.inc()
        log.exception("batch_failed", batch_size=batch.size, error=f"{type(error).__name__}")
        for seg in batch.segments:
            d = seg.token
            if d.windows_left <= 0:
                continue  # finished before the failure
            d.windows_left = 0
            d.scores = None
            reason = f"the daemon failed on this message ({type(error).__name__}); see its log"
            self._reject(d, self._reject_of(d, "internal_error", reason))

    def _handle(self, batch: Batch[Delivery], model: Model, inference: Inference) -> None:
        assert self.bridge is not None
        threshold = self.threshold(model)
        scores = score_batch(inference, threshold)
        n = batch.size
        m = self.metrics
        m.windows_scored.inc(n)
        m.batch_size.observe(n)
        m.inference_seconds.observe(inference.seconds)
        now = time.time()
        segments = batch.segments
        for seg in segments:
            rows = slice(seg.offset, seg.offset + seg.count)
            scored, hits_ = int(scores.finite[rows].sum()), int(scores.anomalous[rows].sum())
            for storm in self.storms.feed(seg.frame.device_id, scored, hits_):
                self._on_storm(storm)
        alert_mask = scores.anomalous
        if self.policy.active:
            alert_mask = alert_mask.copy()
            for seg in segments:
                rows = slice(seg.offset, seg.offset + seg.count)
                alert_mask[rows] = self.policy.admit(seg.frame.device_id, alert_mask[rows], now)
        hits = np.flatnonzero(alert_mask)
        if hits.size:
            self._publish_alerts(batch, hits, scores, model, threshold)
        log.debug(
            "batch_scored",
            batch_size=n,
            alerts=int(hits.size),
            inference_ms=round(inference.seconds * 1000, 3),
            model_version=model.info.version,
        )
        for seg in segments:
            d = seg.token
            rows = slice(seg.offset, seg.offset + seg.count)
            if d.scores is not None:
                d.scores[seg.start : seg.stop] = scores.score[rows]
            if not scores.finite[rows].all():
                self._out_of_range(d, seg.frame, seg.start + np.flatnonzero(~scores.finite[rows]))
            d.windows_left -= seg.count
            if d.windows_left == 0:
                if d.scores is not None:
                    self._publish_scores(d, model, threshold)
                self._check_done(d)

    def _publish_alerts(
        self, batch: Batch[Delivery], hits: np.ndarray, scores: Scores, model: Model, thr: float
    ) -> None:
        """One alert per hit row, encoded together and framed into one write (publish_many)."""
        assert self.bridge is not None
        segments = batch.segments
        starts = np.fromiter((seg.offset for seg in segments), np.int64, len(segments))
        which = np.searchsorted(starts, hits, side="right") - 1
        bounds = np.flatnonzero(np.diff(which, prepend=-1))  # first hit of each segment
        devices: list[str] = []
        seqs: list[int] = []
        ts: list[float] = []
        received: list[float] = []
        callbacks: list[Callable[[], None]] = []
        for lo, hi in zip(bounds.tolist(), [*bounds[1:].tolist(), hits.size], strict=True):
            seg = segments[int(which[lo])]
            frame, d = seg.frame, seg.token
            rows = hits[lo:hi] - (seg.offset - seg.start)
            k = hi - lo
            devices += [frame.device_id] * k
            seqs += (rows + frame.seq).tolist()
            if frame.fs is None:
                ts += [frame.ts] * k
            else:
                ts += [frame.window_ts(r) for r in rows.tolist()]
            received += [d.message.received_at] * k
            if d.on_published is None:
                d.on_published = functools.partial(self._published, d)
            callbacks += [d.on_published] * k
        if (
            self._encoder is None
            or self._encoder.model_version != model.info.version
            or (self._encoder.threshold != thr)
        ):
            self._encoder = AlertEncoder(thr, model.info.name, model.info.version)
        published_at = time.time()
        payloads = self._encoder.encode(
            devices,
            seqs=seqs,
            ts=ts,
            scores=scores.score[hits].tolist(),
            peaks=scores.peak_index[hits].tolist(),
            received_at=received,
            published_at=published_at,
        )
        topics = self._alert_topics
        for dev in set(devices) - topics.keys():
            topics[dev] = f"{self._prefix}/{dev}/alert".encode()
        self.bridge.publish_many(
            [(topics[dev], p, cb) for dev, p, cb in zip(devices, payloads, callbacks, strict=True)]
        )
        for lo, hi in zip(bounds.tolist(), [*bounds[1:].tolist(), hits.size], strict=True):
            # counted once queued, as `_publish` does (a PUBACK can only come on a later read)
            segments[int(which[lo])].token.publishes_left += hi - lo
        self.metrics.latency_seconds.observe_many(published_at - np.array(received))
        self.metrics.alerts.inc(hits.size)
        log.debug("alerts", count=int(hits.size), first_device=devices[0], first_seq=seqs[0])

    def _out_of_range(self, d: Delivery, frame: Frame, rows: np.ndarray) -> None:
        """Windows the model scored NaN/inf: neither alert nor normal, so rejected."""
        seqs = ", ".join(str(frame.seq + int(r)) for r in rows[:8])
        more = f" and {rows.size - 8} more" if rows.size > 8 else ""
        reason = f"score not finite (the model overflowed) for window seq {seqs}{more}"
        self._reject(d, self._reject_of(d, "out_of_range", reason))

    def _reject_of(self, d: Delivery, code: RejectCode, reason: str) -> Reject:
        device_id = d.frame.device_id if d.frame is not None else ""
        return Reject(device_id, code, reason, d.message.received_at, d.message.payload)

    def _on_storm(self, storm: Storm) -> None:
        """Said once per storm: a log line, a metric, and the retained status."""
        assert self.bridge is not None
        self.storm = storm
        self.metrics.storms.inc(scope=storm.scope)
        log.warning("alarm_storm", **storm.to_dict())
        self.bridge.publish(
            self.cfg.status_topic, self.status("online").to_json(), qos=1, retain=True
        )

    def _publish_scores(self, d: Delivery, model: Model, threshold: float) -> None:
        assert self.bridge is not None and d.frame is not None and d.scores is not None
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
        topic = f"{self._prefix}/{frame.device_id}/score"
        for part in report.parts(self.bridge.max_payload(topic), frame.window_ts):
            self._publish(d, topic, part)

    def _published(self, d: Delivery) -> None:
        d.publishes_left -= 1
        self._check_done(d)

    def _check_done(self, d: Delivery) -> None:
        if d.windows_left == 0 and d.publishes_left == 0:
            assert self.bridge is not None
            self.bridge.ack(d.message)
            self.open_deliveries -= 1

    # ------------------------------------------------------------------ model reload

    def request_reload(self, why: str) -> None:
        if not self._reloading and not self.draining:
            task = asyncio.get_running_loop().create_task(self.reload(why))
            self._background.add(task)  # keep a reference until it is done
            task.add_done_callback(self._background.discard)

    async def reload(self, why: str) -> bool:
        """Load and warm the model file again; swap only if it is good. True if swapped."""
        if self._reloading:
            return False
        self._reloading = True
        self.notifier.reloading()
        mc = self.cfg.model
        log.info("model_reloading", why=why, path=mc.path)
        try:
            new = await asyncio.get_running_loop().run_in_executor(
                None,
                functools.partial(
                    load_model,
                    mc.path,
                    provider=mc.provider,
                    intra_op_threads=mc.intra_op_threads,
                    graph_optimization=mc.graph_optimization,
                    warmup_batch=self.cfg.batch.max_batch,
                ),
            )
            old = self.model.info
            if new.info.window_length != old.window_length:
                raise ModelLoadError(
                    mc.path,
                    f"window length {new.info.window_length} != {old.window_length} of the "
                    "running model (restart the daemon to change it)",
                )
        except ModelLoadError as e:
            self.metrics.reloads.inc(result="failed")
            log.error(
                "model_reload_failed",
                path=e.path,
                reason=e.reason,
                keeping=self.model.info.version,
            )
            return False
        finally:
            self._reloading = False
            self.notifier.ready()
        self.model = new
        self.storms.fpr = calibrated_fpr(new.info.metadata)
        self.metrics.reloads.inc(result="ok")
        self.metrics.set_model(new.info.name, new.info.version, new.info.provider)
        log.info(
            "model_reloaded",
            model=new.info.name,
            model_version=new.info.version,
            previous=old.version,
            provider=new.info.provider,
        )
        if self.bridge is not None and self.bridge.connected:
            self.bridge.publish(
                self.cfg.status_topic, self.status("online").to_json(), qos=1, retain=True
            )
        return True

    async def _watch_model(self) -> None:
        path = Path(self.cfg.model.path)

        def stamp() -> tuple[int, int] | None:
            try:
                st = path.stat()
            except OSError:
                return None
            return (st.st_mtime_ns, st.st_size)

        last = stamp()
        while True:
            await asyncio.sleep(self.cfg.model.watch_s)
            now = stamp()
            if now is not None and now != last:
                last = now
                await self.reload("model file changed")


# ---------------------------------------------------------------------- command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, type=Path, help="TOML file (see configs/monitor.toml)"
    )


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"ecg-monitor: bad config: {e}", file=sys.stderr)
        return EXIT_STARTUP
    setup_logging(cfg.service.log_format, cfg.service.log_level)
    mc = cfg.model
    try:
        model = load_model(
            mc.path,
            provider=mc.provider,
            intra_op_threads=mc.intra_op_threads,
            graph_optimization=mc.graph_optimization,
            warmup_batch=cfg.batch.for_provider("CPUExecutionProvider").max_batch,
        )
    except ModelLoadError as e:
        print(f"ecg-monitor: cannot load model: {e}", file=sys.stderr)
        return EXIT_STARTUP
    try:
        return asyncio.run(Service(cfg, model).run())
    except ConfigError as e:
        print(f"ecg-monitor: {e}", file=sys.stderr)
        return EXIT_STARTUP
    except MonitorError as e:
        print(f"ecg-monitor: {e}", file=sys.stderr)
        return EXIT_INCOMPLETE
