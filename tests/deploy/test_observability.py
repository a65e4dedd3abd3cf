"""The Grafana dashboard and Prometheus files only query metrics the daemon really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from monitor.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\b(?:ecg_monitor|process|python)_[a-z0-9_]+")


def exported() -> dict[str, str]:
    """Series name -> type, from the daemon's own exposition (histograms as their series)."""
    types = dict(
        re.findall(r"^# TYPE (\S+) (\S+)$", Metrics(lambda: 0.0).render(), flags=re.MULTILINE)
    )
    series = dict(types)
    for name, kind in types.items():
        if kind == "histogram":
            series.update({f"{name}_{s}": "histogram-series" for s in ("bucket", "sum", "count")})
    return series


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "ecg-monitor.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if isinstance(var.get("query"), dict):
            exprs.append(var["query"]["query"])
    return exprs


def test_dashboard_queries_only_exported_metrics() -> None:
    names = exported()
    exprs = dashboard_exprs()
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert any(m.startswith("ecg_monitor_") for m in used), "no ecg_monitor_ metric"
    assert used <= set(names), used - set(names)
    # histograms are read through _bucket/_sum/_count, never by their bare name
    assert not {m for m in used if names[m] == "histogram"}


def test_dashboard_covers_what_the_issue_asks() -> None:
    text = " ".join(dashboard_exprs())
    for needle in (
        "windows_scored_total",  # throughput
        "messages_rejected_total",  # rejects ...
        "by (code)",  # ... by code
        "alerts_total",
        "batch_size_bucket",
        "alert_latency_seconds_bucket",  # latency percentiles
        "queue_windows",
        "model_info",
        "process_cpu_seconds_total",  # from prometheus-client's process collector
        "process_resident_memory_bytes",
        "process_open_fds",
    ):
        assert needle in text, needle


def test_dashboard_counters_are_rated() -> None:
    for expr in dashboard_exprs():
        for m in METRIC.findall(expr):
            if m.endswith(("_total", "_bucket", "_sum", "_count")):
                assert re.search(rf"(rate|increase)\(\s*{m}\b", expr), expr


def test_prometheus_files_reference_exported_metrics() -> None:
    yaml = pytest.importorskip("yaml")
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = scrape["scrape_configs"][0]
    assert job["job_name"] == "ecg-monitor" and job["metrics_path"] == "/metrics"
    rules = yaml.safe_load((DEPLOY / "prometheus" / "ecg-monitor-alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used and used <= set(exported()), used - set(exported())
