"""Prometheus text exposition, served over HTTP by the daemon's tiny server."""

from __future__ import annotations

import asyncio

from monitor.metrics import Counter, Histogram, Metrics, MetricsServer


def test_counter_with_labels_and_histogram_render_prometheus_text() -> None:
    c = Counter("messages_rejected_total", "Rejected.")
    c.inc(code="bad_json")
    c.inc(2, code="bad_length")
    c.inc(code="bad_json")
    text = "\n".join(c.render())
    assert "# TYPE ecg_monitor_messages_rejected_total counter" in text
    assert 'ecg_monitor_messages_rejected_total{code="bad_json"} 2' in text
    assert 'ecg_monitor_messages_rejected_total{code="bad_length"} 2' in text
    h = Histogram("batch_size", "Sizes.", (1, 8, 64))
    for v in (1, 5, 64, 100):
        h.observe(v)
    lines = list(h.render())
    assert 'ecg_monitor_batch_size_bucket{le="1"} 1' in lines
    assert 'ecg_monitor_batch_size_bucket{le="8"} 2' in lines
    assert 'ecg_monitor_batch_size_bucket{le="64"} 3' in lines
    assert 'ecg_monitor_batch_size_bucket{le="+Inf"} 4' in lines
    assert "ecg_monitor_batch_size_sum 170" in lines
    assert "ecg_monitor_batch_size_count 4" in lines


def test_label_values_are_escaped() -> None:
    c = Counter("x_total", "X.")
    c.inc(v='a"b\\c\nd')
    assert 'ecg_monitor_x_total{v="a\\"b\\\\c\\nd"} 1' in list(c.render())


def test_server_serves_metrics_and_404s_the_rest() -> None:
    m = Metrics(queue_depth=lambda: 7)
    m.windows_received.inc(3)
    m.set_model("affine", "v9", "CPUExecutionProvider")

    async def go() -> tuple[bytes, bytes]:
        server = MetricsServer(m, "127.0.0.1", 0)
        await server.start()

        async def get(path: str) -> bytes:
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await w.drain()
            data = await r.read()
            w.close()
            return data

        try:
            return await get("/metrics"), await get("/nope")
        finally:
            await server.close()

    ok, missing = asyncio.run(go())
    head, body = ok.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"text/plain; version=0.0.4" in head
    text = body.decode()
    assert "ecg_monitor_windows_received_total 3" in text
    assert "ecg_monitor_queue_windows 7" in text
    info = 'model="affine",model_version="v9",provider="CPUExecutionProvider"'
    assert f"ecg_monitor_model_info{{{info}}} 1" in text
    assert missing.startswith(b"HTTP/1.1 404")
