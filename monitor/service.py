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
import importlib
import signal
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from monitor.alerts import Status
from monitor.batcher import Batch, Batcher
from monitor.config import Config, load_config
from monitor.engine import Inference, Model, load_model
from monitor.errors import ConfigError, ModelLoadError, MonitorError
from monitor.log import setup_logging
from monitor.metrics import Metrics, MetricsServer
from monitor.mqtt import Message, MqttBridge
from monitor.pipeline import Input, Pipeline, Token
from monitor.scorer import score_batch
from monitor.storm import Storm, StormGuard, calibrated_fpr
from monitor.systemd import Notifier
from monitor.windows import WindowInput

log = structlog.get_logger("monitor.service")

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_STARTUP = 3


class Service:
    """The running daemon. Everything but inference runs on the event loop thread."""

    def __init__(self, cfg: Config, model: Model, notifier: Notifier | None = None) -> None:
        self._batch_spec = cfg.batch  # as configured: "auto" is resolved again on reload
        batch = cfg.batch.for_provider(
            model.info.provider, cfg.limits.queue_windows, model.seconds_per_window
        )
        self.cfg = cfg = dataclasses.replace(cfg, batch=batch)  # "auto" sizes resolved
        self.model = model
        self.notifier = notifier or Notifier()
        self.started_at = time.time()
        self.batcher: Batcher[Token] = Batcher(cfg.batch.max_batch, cfg.batch.max_wait_ms / 1000.0)
        self.metrics = Metrics(queue_depth=lambda: float(self.batcher.queued))
        self.metrics.set_model(model.info.name, model.info.version, model.info.provider)
        self.storms = StormGuard(
            calibrated_fpr(model.info.metadata),
            device_windows=cfg.alerts.storm_windows,
            fleet_windows=cfg.alerts.storm_fleet_windows,
            min_share=cfg.alerts.storm_share,
        )
        self.storm: Storm | None = None  # the latest, carried in the status
        self.pipe = Pipeline(cfg, self.metrics, self.batcher, self.storms, self._on_storm)
        self.inputs: list[Input] = []
        if cfg.inputs_windows and model.info.context_size:
            raise ConfigError(
                f"{model.info.path} takes a context input, which windows do not carry: "
                "set streams.enabled = true and streams.windows = false"
            )
        if cfg.inputs_windows:
            self.inputs.append(WindowInput(self.pipe, model.info.window_length))
        if cfg.streams.enabled:
            # imported only when used: the front end brings scipy (seconds of start-up)
            streams = importlib.import_module("monitor.streams")
            self.inputs.append(streams.StreamInput(self.pipe, model))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.should_exit = False
        self.force_exit = False
        self.exit_code = EXIT_OK
        self._stop = asyncio.Event()
        self._reloading = False
        self._background: set[asyncio.Task[bool]] = set()
        self._inflight: asyncio.Queue[tuple[Batch[Token], Model, asyncio.Future[Inference]] | None]
        self.bridge: MqttBridge | None = None

    @property
    def draining(self) -> bool:
        return self.pipe.draining

    @property
    def open_deliveries(self) -> int:
        return sum(i.busy() for i in self.inputs)

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
                    subscription=[i.topic_filter for i in self.inputs],
                    will=(self.cfg.status_topic, self.status("offline").to_json()),
                    on_message=self._on_message,
                    on_online=self._on_online,
                    on_refused=self.metrics.outputs_refused.inc,
                )
            except (ssl.SSLError, OSError, ValueError) as e:  # TLS files paho cannot use
                raise ConfigError(f"mqtt: {e}") from None
            self.pipe.bridge = self.bridge
            producer = asyncio.create_task(self._produce(), name="batches")
            consumer = asyncio.create_task(self._consume(), name="results")
            tasks = [producer, consumer]
            tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
            for inp in self.inputs:
                tasks.append(asyncio.create_task(inp.background(), name="input"))
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
                    subscription=[i.topic_filter for i in self.inputs],
                    model=self.model.info.name,
                    model_version=self.model.info.version,
                    provider=self.model.info.provider,
                    max_batch=self.batcher.max_batch,
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
        self.pipe.draining = True
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
        """Called by the bridge for each message, on the loop: to the input kind it is for."""
        if self.draining:
            return  # not acked: the broker redelivers it to the next session
        for inp in self.inputs:
            if inp.accepts(msg.topic):
                inp.on_message(msg)
                return

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
            fut = loop.run_in_executor(self.executor, model.run, batch.windows, batch.context)
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

    def _fail_batch(self, batch: Batch[Token], error: Exception) -> None:
        """Every segment's owner settles what this batch leaves open (windows: internal_error
        rejects with the payload)."""
        self.metrics.batch_failures.inc()
        log.exception("batch_failed", batch_size=batch.size, error=f"{type(error).__name__}")
        for seg in batch.segments:
            seg.token.owner.failed(seg, error)

    def _on_storm(self, storm: Storm) -> None:
        """Said once per storm: a log line, a metric, and the retained status."""
        assert self.bridge is not None
        self.storm = storm
        self.metrics.storms.inc(scope=storm.scope)
        log.warning("alarm_storm", **storm.to_dict())
        self.bridge.publish(
            self.cfg.status_topic, self.status("online").to_json(), qos=1, retain=True
        )

    def _handle(self, batch: Batch[Token], model: Model, inference: Inference) -> None:
        """Score the batch once, then hand each segment's rows to the input that put them."""
        threshold = self.threshold(model)
        scores = score_batch(inference, threshold, model.info.p_values)
        n = batch.size
        m = self.metrics
        m.windows_scored.inc(n)
        m.batch_size.observe(n)
        m.inference_seconds.observe(inference.seconds)
        now = time.time()
        segs = batch.segments
        i = 0
        while i < len(segs):  # runs of consecutive segments of one input, handed over at once
            owner = segs[i].token.owner
            j = i + 1
            while j < len(segs) and segs[j].token.owner is owner:
                j += 1
            owner.scored_run(segs[i:j], scores, model, threshold, now)
            i = j
        log.debug(
            "batch_scored",
            batch_size=n,
            alerts=int(scores.anomalous.sum()),
            inference_ms=round(inference.seconds * 1000, 3),
            model_version=model.info.version,
        )

    # ------------------------------------------------------------------ model reload

    def request_reload(self, why: str) -> None:
        if not self._reloading and not self.draining:
            task = asyncio.get_running_loop().create_task(self.reload(why))
            self._background.add(task)  # keep a reference until it is done
            task.add_done_callback(self._background.discard)

    def _resize_batches(self, model: Model) -> None:
        """An "auto" max_batch follows the model's cost (a reload may swap dense for LSTM)."""
        batch = self._batch_spec.for_provider(
            model.info.provider, self.cfg.limits.queue_windows, model.seconds_per_window
        )
        if batch.max_batch != self.batcher.max_batch:
            log.info("batch_resized", max_batch=batch.max_batch, was=self.batcher.max_batch)
            self.batcher.max_batch = batch.max_batch
            self.cfg = dataclasses.replace(
                self.cfg, batch=dataclasses.replace(self.cfg.batch, max_batch=batch.max_batch)
            )

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
                    warmup_batch=self._batch_spec.for_provider(
                        self.model.info.provider, self.cfg.limits.queue_windows
                    ).max_batch,
                ),
            )
            old = self.model.info
            if new.info.window_length != old.window_length:
                raise ModelLoadError(
                    mc.path,
                    f"window length {new.info.window_length} != {old.window_length} of the "
                    "running model (restart the daemon to change it)",
                )
            same = ("ecg.segmentation",)
            if any(new.info.metadata.get(k) != old.metadata.get(k) for k in same) or (
                new.info.context_size != old.context_size
            ):
                raise ModelLoadError(
                    mc.path,
                    "segmentation or context input differs from the running model's "
                    "(restart the daemon to change how beats are cut)",
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
        self._resize_batches(new)
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
