"""Prometheus metrics in the text exposition format, served by a tiny asyncio HTTP server.

No prometheus_client dependency: counters, gauges and histograms of floats, rendered on demand.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
from collections.abc import Callable, Iterable

import structlog

log = structlog.get_logger("monitor.metrics")

PREFIX = "ecg_monitor_"
LabelKey = tuple[tuple[str, str], ...]


def _labels(key: LabelKey, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = key + extra
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = PREFIX + name, help_text
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for key, v in sorted(self._values.items()):
            yield f"{self.name}{_labels(key)} {_num(v)}"


class Gauge:
    def __init__(self, name: str, help_text: str, fn: Callable[[], float] | None = None) -> None:
        self.name, self.help = PREFIX + name, help_text
        self._fn = fn
        self._values: dict[LabelKey, float] = {}

    def set(self, value: float, **labels: str) -> None:
        self._values[tuple(sorted(labels.items()))] = value

    def clear(self) -> None:
        self._values.clear()

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        if self._fn is not None:
            yield f"{self.name} {_num(self._fn())}"
        for key, v in sorted(self._values.items()):
            yield f"{self.name}{_labels(key)} {_num(v)}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Iterable[float]) -> None:
        self.name, self.help = PREFIX + name, help_text
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # last: +Inf only
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        cum = 0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            cum += c
            yield f'{self.name}_bucket{{le="{_num(bound)}"}} {cum}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {_num(self.sum)}"
        yield f"{self.name}_count {self.count}"


_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    """Everything the daemon counts. Updated on the event loop only."""

    def __init__(self, queue_depth: Callable[[], float] | None = None) -> None:
        self.windows_received = Counter("windows_received_total", "Windows decoded from messages.")
        self.windows_scored = Counter("windows_scored_total", "Windows run through the model.")
        self.rejected = Counter(
            "messages_rejected_total", "Messages rejected, by reject code (DESIGN.md)."
        )
        self.dropped = Counter(
            "windows_dropped_total", "QoS 0 windows dropped because the queue was full."
        )
        self.alerts = Counter("alerts_total", "Alerts published.")
        self.reloads = Counter("model_reloads_total", "Model reloads, by result (ok|failed).")
        self.storms = Counter(
            "alarm_storms_total",
            "Alarm storms (alert share far above the calibrated false-alarm rate), by scope "
            "(device|fleet): the model and the data likely do not match.",
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
            "stream_quality_changes_total", "Signal quality changes published, by state."
        )
        self.stream_forced_acks = Counter(
            "stream_forced_acks_total",
            "Stream chunks acknowledged early because the in-flight limit was near.",
        )
        self.stream_devices = Gauge("stream_devices", "Stream devices with state in memory.")
        self.queue_depth = Gauge("queue_windows", "Windows waiting for inference.", queue_depth)
        self.model_info = Gauge("model_info", "The model in use (value 1).")
        self.up = Gauge("connected", "1 while connected to the broker.")

    def set_model(self, name: str, version: str, provider: str) -> None:
        self.model_info.clear()
        self.model_info.set(1, model=name, model_version=version, provider=provider)

    def render(self) -> str:
        parts = (
            self.windows_received,
            self.windows_scored,
            self.rejected,
            self.dropped,
            self.alerts,
            self.reloads,
            self.storms,
            self.outputs_refused,
            self.batch_failures,
            self.batch_size,
            self.inference_seconds,
            self.latency_seconds,
            self.chunks_received,
            self.beats_scored,
            self.quality_changes,
            self.stream_forced_acks,
            self.stream_devices,
            self.queue_depth,
            self.model_info,
            self.up,
        )
        return "\n".join(line for m in parts for line in m.render()) + "\n"


class MetricsServer:
    """GET /metrics over HTTP/1.0-style single responses; anything else is 404."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics, self.host, self.port = metrics, host, port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("metrics_listening", host=self.host, port=self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            if (
                len(parts) >= 2
                and parts[0] in ("GET", "HEAD")
                and parts[1].split("?")[0]
                in (
                    "/metrics",
                    "/",
                )
            ):
                body = self.metrics.render().encode()
                head = (
                    "HTTP/1.1 200 OK\r\n"
                    "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(head.encode() + (body if parts[0] == "GET" else b""))
            else:
                writer.write(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
