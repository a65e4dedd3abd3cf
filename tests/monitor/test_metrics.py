"""Metrics through prometheus-client: our series, the process collectors, content negotiation,
and /metrics scraped from the running daemon."""

from __future__ import annotations

import asyncio
import gzip
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from monitor.metrics import Counter, Gauge, Metrics, MetricsServer
from monitor.wire import encode_binary
from tests.brokers import Mosquitto, free_port
from tests.monitor.daemon import Collector, Daemon, Publisher, wait_online, write_config
from tests.onnx_models import build_model, windows

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def samples(
    text: str, openmetrics: bool = False
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus-client's own parser."""
    families = parse_om(text) if openmetrics else parse_text(text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_counters_with_labels_and_histograms_parse_back() -> None:
    m = Metrics(queue_depth=lambda: 7)
    m.rejected.inc(code="bad_json")
    m.rejected.inc(2, code="bad_length")
    m.rejected.inc(code="bad_json")
    for v in (1, 5, 64, 100):
        m.batch_size.observe(v)
    m.latency_seconds.observe_many(np.array([0.0004, 0.003, 0.003, 9.0]))
    s = samples(m.render())
    assert s[("ecg_monitor_messages_rejected_total", (("code", "bad_json"),))] == 2
    assert s[("ecg_monitor_messages_rejected_total", (("code", "bad_length"),))] == 2
    assert m.rejected.value(code="bad_json") == 2 and m.rejected.value(code="nope") == 0
    bucket = "ecg_monitor_batch_size_bucket"
    assert [s[(bucket, (("le", le),))] for le in ("1.0", "8.0", "64.0", "+Inf")] == [1, 2, 3, 4]
    assert s[("ecg_monitor_batch_size_sum", ())] == 170
    assert s[("ecg_monitor_batch_size_count", ())] == 4
    lat = "ecg_monitor_alert_latency_seconds_bucket"
    assert s[(lat, (("le", "0.0005"),))] == 1
    assert s[(lat, (("le", "0.005"),))] == 3
    assert s[(lat, (("le", "5.0"),))] == 3 and s[(lat, (("le", "+Inf"),))] == 4
    assert s[("ecg_monitor_alert_latency_seconds_sum", ())] == pytest.approx(9.0064)
    assert s[("ecg_monitor_queue_windows", ())] == 7


def test_label_values_are_escaped_by_the_exposition() -> None:
    m = Metrics()
    m.rejected.inc(code='a"b\\c\nd')
    assert 'ecg_monitor_messages_rejected_total{code="a\\"b\\\\c\\nd"} 1.0' in m.render()
    assert (
        samples(m.render())[("ecg_monitor_messages_rejected_total", (("code", 'a"b\\c\nd'),))] == 1
    )


def test_registry_has_process_platform_and_gc_collectors_and_model_info() -> None:
    m = Metrics()
    m.set_model("old", "v1", "CPUExecutionProvider")
    m.set_model("affine", "v9", "CPUExecutionProvider")
    s = samples(m.render())
    names = {name for name, _ in s}
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "python_info",
        "python_gc_collections_total",
    ):
        assert name in names, name
    info = [labels for name, labels in s if name == "ecg_monitor_model_info"]
    assert info == [
        (("model", "affine"), ("model_version", "v9"), ("provider", "CPUExecutionProvider"))
    ]


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.alerts.inc(5)
    assert a.alerts.value() == 5 and b.alerts.value() == 0


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    m = Metrics()
    m.windows_received.inc(3)
    body, ctype = m.exposition(OPENMETRICS)
    assert ctype.startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    assert "# TYPE ecg_monitor_windows_received counter" in text
    assert samples(text, openmetrics=True)[("ecg_monitor_windows_received_total", ())] == 3
    body, ctype = m.exposition("")
    assert ctype.startswith("text/plain; version=0.0.4")


def test_server_serves_text_openmetrics_and_gzip() -> None:
    m = Metrics(queue_depth=lambda: 7)
    m.windows_received.inc(3)

    async def go() -> list[tuple[str, bytes, str]]:
        server = MetricsServer(m, "127.0.0.1", 0)
        await server.start()
        assert server.port != 0

        def get(headers: dict[str, str]) -> tuple[str, bytes, str]:
            req = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", headers=headers)
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.headers["Content-Type"], r.read(), r.headers.get("Content-Encoding", "")

        try:
            return [
                await asyncio.to_thread(get, h)
                for h in ({}, {"Accept": OPENMETRICS}, {"Accept-Encoding": "gzip"})
            ]
        finally:
            await server.close()

    (t_type, t_body, _), (o_type, o_body, _), (_, g_body, g_enc) = asyncio.run(go())
    assert t_type.startswith("text/plain; version=0.0.4")
    assert samples(t_body.decode())[("ecg_monitor_queue_windows", ())] == 7
    assert o_type.startswith("application/openmetrics-text")
    assert (
        samples(o_body.decode(), openmetrics=True)[("ecg_monitor_windows_received_total", ())] == 3
    )
    assert g_enc == "gzip"
    assert b"ecg_monitor_windows_received_total 3.0" in gzip.decompress(g_body)


def test_bound_port_is_a_startup_error(tmp_path: Path) -> None:
    m = Metrics()

    async def go() -> None:
        first = MetricsServer(m, "127.0.0.1", 0)
        await first.start()
        try:
            with pytest.raises(OSError):
                await MetricsServer(Metrics(), "127.0.0.1", first.port).start()
        finally:
            await first.close()

    asyncio.run(go())


@pytest.mark.timeout(120)
def test_running_daemon_exports_process_metrics_and_our_counters(
    tmp_path: Path, mosquitto: Mosquitto, daemons: list[Daemon]
) -> None:
    """Scrape the real daemon (subprocess, real mosquitto) after it scored windows."""
    model = build_model(tmp_path / "model.onnx", threshold=20.0, version="v1")
    port = free_port()
    config = write_config(
        tmp_path / "c.toml", mosquitto.port, model, metrics={"port": port, "host": "127.0.0.1"}
    )
    instance = config.read_text().split('instance_id = "')[1].split('"')[0]
    col = Collector(mosquitto.port, ["ecg/scrape/+", "ecg-monitor/+/status"])
    d = Daemon(config).start()
    daemons.append(d)
    wait_online(col, instance)
    pub = Publisher(mosquitto.port)
    anomalous = np.arange(32) % 4 == 0  # 8 alerts
    for i in range(2):
        pub.publish(
            "ecg/scrape/window", encode_binary(16 * i, 0.0, windows(16, anomalous[16 * i :][:16]))
        )
    pub.publish("ecg/scrape/window", b"{not json")
    pub.close()
    col.wait_for(lambda: len(col.of("/alert")) >= 8 and col.of("/rejected"), 30, "outputs")

    def scrape(accept: str = "") -> tuple[str, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
        if accept:
            req.add_header("Accept", accept)
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.headers["Content-Type"], r.read().decode()

    col.wait_for(lambda: "ecg_monitor_alerts_total 8.0" in scrape()[1], 15, "alert count")
    ctype, text = scrape()
    assert ctype.startswith("text/plain; version=0.0.4")
    s = samples(text)
    assert s[("process_cpu_seconds_total", ())] > 0
    assert s[("process_resident_memory_bytes", ())] > 10 * 2**20  # numpy + onnxruntime loaded
    assert s[("process_open_fds", ())] >= 4  # stdio, broker socket, metrics socket at least
    assert s[("ecg_monitor_windows_received_total", ())] == 32
    assert s[("ecg_monitor_windows_scored_total", ())] == 32
    assert s[("ecg_monitor_alerts_total", ())] == 8
    assert s[("ecg_monitor_alert_latency_seconds_count", ())] == 8
    assert s[("ecg_monitor_messages_rejected_total", (("code", "bad_json"),))] == 1
    assert s[("ecg_monitor_connected", ())] == 1
    assert any(k[0] == "ecg_monitor_model_info" and ("model_version", "v1") in k[1] for k in s)
    otype, otext = scrape(OPENMETRICS)
    assert otype.startswith("application/openmetrics-text")
    om = samples(otext, openmetrics=True)
    assert om[("ecg_monitor_windows_scored_total", ())] == 32
    assert om[("process_cpu_seconds_total", ())] > 0
    col.close()


def test_a_family_added_without_registry_or_label_declaration_is_exported() -> None:
    """Code that adds `self.x = Counter("x_total", "X.")` to Metrics and counts with labels it
    never declared (the call style the daemon always had) still reaches /metrics."""

    class More(Metrics):
        def __init__(self) -> None:
            self.extra = Counter("extra_events_total", "Extra events, by scope.")
            self.devices = Gauge("extra_devices", "Devices.")
            super().__init__()

    m = More()
    m.extra.inc(scope="fleet")
    m.extra.inc(2, scope="device")
    m.devices.set(3)
    s = samples(m.render())
    assert s[("ecg_monitor_extra_events_total", (("scope", "fleet"),))] == 1
    assert s[("ecg_monitor_extra_events_total", (("scope", "device"),))] == 2
    assert s[("ecg_monitor_extra_devices", ())] == 3
    assert "# TYPE ecg_monitor_extra_events_total counter" in m.render()
