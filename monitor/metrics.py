"""Prometheus metrics through prometheus-client, served from its own HTTP thread.

`Metrics` owns a `CollectorRegistry` with the standard process (CPU, RSS, open files), platform
and GC collectors plus the daemon's own series. The exposition (text 0.0.4 or OpenMetrics, by
the scraper's Accept header, gzip when asked) is prometheus-client's; the HTTP server runs in a
daemon thread, so a scrape never waits for the event loop and the loop never waits for it.

The daemon's series are prometheus-client collectors of our own (`Counter`, `Gauge`,
`Histogram` below, each yielding the library's metric families): they keep the call style the
daemon's code has always used (`inc(n, code=...)`, `set(v)`, `observe(v)`, labels as keyword
arguments, no declaration needed), updates are a dict or numpy add under an uncontended lock,
and `Histogram.observe_many` takes a whole batch of alert latencies in one call. A family
built without a registry joins the `Metrics` registry it is an attribute of.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIServer

import numpy as np
import prometheus_client
import structlog
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = structlog.get_logger("monitor.metrics")

PREFIX = "ecg_monitor_"


LabelKey = tuple[tuple[str, str], ...]


class _Series(Collector):
    """Name, help text and lock of one of our series, and its registry hookup (at most once).

    Subclasses set up their own state after `__init__` and only then register: a registry
    collects a collector as it registers it.
    """

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = PREFIX + name, help_text
        self._lock = threading.Lock()
        self.registry: CollectorRegistry | None = None

    def register(self, registry: CollectorRegistry) -> None:
        if self.registry is None:
            registry.register(self)
            self.registry = registry


class _Family(_Series):
    """Shared part of our series: name, help, label sets -> value, registry hookup.

    Label names come with each call (`inc(code="bad_json")`), so a series needs no declaration,
    as the daemon's code always had it. `registry` may be left out: `Metrics` registers every
    family it holds when it is built.
    """

    kind = "gauge"

    def __init__(
        self, name: str, help_text: str, registry: CollectorRegistry | None = None
    ) -> None:
        super().__init__(name, help_text)
        self._values: dict[LabelKey, float] = {}
        if registry is not None:
            self.register(registry)

    def value(self, **labels: str) -> float:
        """Current value of one series (0 if it was never set)."""
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def _snapshot(self) -> list[tuple[LabelKey, float]]:
        with self._lock:
            return sorted(self._values.items())

    def _family(self, samples: list[tuple[LabelKey, float]]) -> Metric:
        labelnames = sorted({k for key, _ in samples for k, _ in key})
        family: CounterMetricFamily | GaugeMetricFamily
        if self.kind == "counter":
            family = CounterMetricFamily(self.name, self.help, labels=labelnames)
        else:
            family = GaugeMetricFamily(self.name, self.help, labels=labelnames)
        for key, v in samples:
            d = dict(key)
            family.add_metric([d.get(n, "") for n in labelnames], v)
        return family

    def collect(self) -> Iterator[Metric]:
        yield self._family(self._snapshot())

    def describe(self) -> Iterator[Metric]:
        yield self._family([])


class Counter(_Family):
    """A count that only goes up; labels as keyword arguments. Shows 0 before the first
    increment unless `labelled` (then it has no series until one is counted)."""

    kind = "counter"

    def __init__(
        self,
        name: str,
        help_text: str,
        registry: CollectorRegistry | None = None,
        *,
        labelled: bool = False,
    ) -> None:
        self._labelled = labelled
        super().__init__(name, help_text, registry)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items())) if labels else ()
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def collect(self) -> Iterator[Metric]:
        samples = self._snapshot()
        yield self._family(samples if samples or self._labelled else [((), 0.0)])


class Gauge(_Family):
    """A value that goes up and down; `fn` makes it read a value at scrape time instead."""

    def __init__(
        self,
        name: str,
        help_text: str,
        fn: Callable[[], float] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._fn = fn
        super().__init__(name, help_text, registry)

    def set(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items())) if labels else ()
        with self._lock:
            self._values[key] = value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def collect(self) -> Iterator[Metric]:
        samples = self._snapshot()
        if self._fn is not None:
            samples = [((), float(self._fn())), *samples]
        yield self._family(samples)


class Histogram(_Series):
    """Cumulative histogram over numpy bucket counts; exposed as a prometheus HistogramMetricFamily.

    Updated from the event loop, read by the scrape thread: a lock keeps buckets, sum and
    count consistent with each other.
    """

    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: Iterable[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(name, help_text)
        self.bounds = np.array(sorted(float(b) for b in buckets), np.float64)
        self._counts = np.zeros(len(self.bounds) + 1, np.int64)  # last: above every bound
        self._sum = 0.0
        if registry is not None:
            self.register(registry)

    def observe(self, value: float) -> None:
        i = int(np.searchsorted(self.bounds, value, side="left"))
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def observe_many(self, values: np.ndarray) -> None:
        """Observe every element of `values` (one bincount instead of a call per value)."""
        if values.size == 0:
            return
        idx = np.searchsorted(self.bounds, values, side="left")
        add = np.bincount(idx, minlength=len(self._counts))
        total = float(values.sum())
        with self._lock:
            self._counts += add
            self._sum += total

    @property
    def count(self) -> int:
        return int(self._counts.sum())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cum = np.cumsum(self._counts).tolist()
            total = self._sum
        buckets = [(repr(b), float(c)) for b, c in zip(self.bounds.tolist(), cum, strict=False)]
        buckets.append(("+Inf", float(cum[-1])))
        family = HistogramMetricFamily(self.name, self.help)
        family.add_metric([], buckets, total)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.help)


_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    """Everything the daemon counts, in its own registry. Updated on the event loop."""

    def __init__(self, queue_depth: Callable[[], float] | None = None) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.windows_received = Counter("windows_received_total", "Windows decoded from messages.")
        self.windows_scored = Counter("windows_scored_total", "Windows run through the model.")
        self.rejected = Counter(
            "messages_rejected_total",
            "Messages rejected, by reject code (DESIGN.md).",
            labelled=True,
        )
        self.dropped = Counter(
            "windows_dropped_total", "QoS 0 windows dropped because the queue was full."
        )
        self.alerts = Counter("alerts_total", "Alerts published.")
        self.reloads = Counter(
            "model_reloads_total", "Model reloads, by result (ok|failed).", labelled=True
        )
        self.storms = Counter(
            "alarm_storms_total",
            "Alarm storms (alert share far above the calibrated false-alarm rate), by scope "
            "(device|fleet): the model and the data likely do not match.",
            labelled=True,
        )
        self.outputs_refused = Counter(
            "outputs_refused_total",
            "Outputs not published because they could not fit the broker's packet limit.",
        )
        self.batch_failures = Counter(
            "batch_failures_total", "Batches whose results could not be handled (a daemon bug)."
        )
        self.batch_size = Histogram(
            "batch_size", "Windows per inference call.", (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
        )
        self.inference_seconds = Histogram(
            "inference_seconds", "Seconds per inference call (one batch).", _SECONDS
        )
        self.latency_seconds = Histogram(
            "alert_latency_seconds",
            "Seconds from a window's receipt to its alert's publish.",
            _SECONDS,
        )
        self.chunks_received = Counter(
            "stream_chunks_received_total", "Stream chunks decoded (owned devices only)."
        )
        self.beats_scored = Counter("beats_scored_total", "Beats found in streams and scored.")
        self.quality_changes = Counter(
            "stream_quality_changes_total",
            "Signal quality changes published, by state.",
            labelled=True,
        )
        self.stream_forced_acks = Counter(
            "stream_forced_acks_total",
            "Stream chunks acknowledged early because the in-flight limit was near.",
        )
        self.stream_devices = Gauge("stream_devices", "Stream devices with state in memory.")
        self.queue_depth = Gauge(
            "queue_windows", "Windows waiting for inference.", queue_depth or (lambda: 0.0)
        )
        self.model_info = Gauge("model_info", "The model in use (value 1).")
        self.up = Gauge("connected", "1 while connected to the broker.")
        self._register_all()

    def _register_all(self) -> None:
        """Every family held in an attribute joins this registry (a family added by later code
        without a registry argument is exported too)."""
        for value in vars(self).values():
            if isinstance(value, _Family | Histogram):
                value.register(self.registry)

    def set_model(self, name: str, version: str, provider: str) -> None:
        self.model_info.clear()
        self.model_info.set(1, model=name, model_version=version, provider=provider)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) a scraper sending this Accept header gets (text 0.0.4 default)."""
        encoder, content_type = prometheus_client.exposition.choose_encoder(accept)
        return encoder(self.registry), content_type

    def render(self, accept: str = "") -> str:
        return self.exposition(accept)[0].decode()


class MetricsServer:
    """prometheus-client's HTTP server for one registry, in a daemon thread."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics, self.host, self.port = metrics, host, port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Bind and serve (OSError if the address is taken)."""
        self._server, self._thread = prometheus_client.start_http_server(
            self.port, addr=self.host, registry=self.metrics.registry
        )
        self.port = int(self._server.server_port)
        log.info("metrics_listening", host=self.host, port=self.port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)  # returns within serve_forever's poll
            server.server_close()
