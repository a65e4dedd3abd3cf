"""Prometheus metrics through prometheus-client, served from its own HTTP thread.

`Metrics` owns a `CollectorRegistry` with the standard process (CPU, RSS, open files), platform
and GC collectors plus the daemon's own series. The exposition (text 0.0.4 or OpenMetrics, by
the scraper's Accept header, gzip when asked) is prometheus-client's; the HTTP server runs in a
daemon thread, so a scrape never waits for the event loop and the loop never waits for it.

The daemon's code talks to thin wrappers that keep one call style (`inc(n, code=...)`,
`set(v)`, `observe(v)`): labels as keyword arguments, children cached. Histograms are a
collector of our own over numpy bucket counts, because the alert path observes one latency
per alert and `observe_many` takes a whole batch of them in one call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

import numpy as np
import prometheus_client
import structlog
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger("monitor.metrics")

PREFIX = "ecg_monitor_"
del GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR  # the global registry is not ours


class Counter:
    """A prometheus-client Counter with labels passed as keyword arguments."""

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
    ) -> None:
        self.name = PREFIX + name
        self._metric = prometheus_client.Counter(
            self.name, help_text, labelnames=tuple(labelnames), registry=registry
        )
        self._children: dict[tuple[str, ...], Any] = {}
        self._labelnames = tuple(labelnames)

    def _child(self, labels: dict[str, str]) -> Any:
        key = tuple(labels[n] for n in self._labelnames)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metric.labels(*key)
        return child

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        (self._child(labels) if labels else self._metric).inc(amount)

    def value(self, **labels: str) -> float:
        """Current value of one series (0 if it was never incremented)."""
        for family in self._metric.collect():
            for s in family.samples:
                if s.name.endswith("_total") and s.labels == labels:
                    return float(s.value)
        return 0.0


class Gauge:
    """A prometheus-client Gauge; `fn` makes it read a value at scrape time instead."""

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        fn: Callable[[], float] | None = None,
    ) -> None:
        self.name = PREFIX + name
        self._metric = prometheus_client.Gauge(
            self.name, help_text, labelnames=tuple(labelnames), registry=registry
        )
        if fn is not None:
            self._metric.set_function(fn)

    def set(self, value: float, **labels: str) -> None:
        (self._metric.labels(**labels) if labels else self._metric).set(value)

    def clear(self) -> None:
        self._metric.clear()


class Histogram(Collector):
    """Cumulative histogram over numpy bucket counts; exposed as a prometheus HistogramMetricFamily.

    Updated from the event loop, read by the scrape thread: a lock keeps buckets, sum and
    count consistent with each other.
    """

    def __init__(
        self, registry: CollectorRegistry, name: str, help_text: str, buckets: Iterable[float]
    ) -> None:
        self.name, self.help = PREFIX + name, help_text
        self.bounds = np.array(sorted(float(b) for b in buckets), np.float64)
        self._counts = np.zeros(len(self.bounds) + 1, np.int64)  # last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

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
        self.windows_received = Counter(
            r, "windows_received_total", "Windows decoded from messages."
        )
        self.windows_scored = Counter(r, "windows_scored_total", "Windows run through the model.")
        self.rejected = Counter(
            r, "messages_rejected_total", "Messages rejected, by reject code (DESIGN.md).", ["code"]
        )
        self.dropped = Counter(
            r, "windows_dropped_total", "QoS 0 windows dropped because the queue was full."
        )
        self.alerts = Counter(r, "alerts_total", "Alerts published.")
        self.reloads = Counter(
            r, "model_reloads_total", "Model reloads, by result (ok|failed).", ["result"]
        )
        self.batch_size = Histogram(
            r, "batch_size", "Windows per inference call.", (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
        )
        self.inference_seconds = Histogram(
            r, "inference_seconds", "Seconds per inference call (one batch).", _SECONDS
        )
        self.latency_seconds = Histogram(
            r,
            "alert_latency_seconds",
            "Seconds from a window's receipt to its alert's publish.",
            _SECONDS,
        )
        self.queue_depth = Gauge(
            r, "queue_windows", "Windows waiting for inference.", fn=queue_depth or (lambda: 0.0)
        )
        self.model_info = Gauge(
            r,
            "model_info",
            "The model in use (value 1).",
            ["model", "model_version", "provider"],
        )
        self.up = Gauge(r, "connected", "1 while connected to the broker.")

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
