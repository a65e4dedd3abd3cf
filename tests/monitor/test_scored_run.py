"""Many messages in one batch are settled together (`WindowInput.scored_run`): every
anomalous window gets exactly its alert, with the fields the per-message path gives, and
every message is acknowledged. The Service runs in this process against a real mosquitto, so
the test can see that the batched path (not the per-segment one) handled the batches."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor import windows as windows_mod
from monitor.config import build_config
from monitor.engine import load_model
from monitor.service import Service
from monitor.wire import encode_binary
from tests.brokers import Mosquitto
from tests.monitor.daemon import Collector, Publisher
from tests.onnx_models import build_model, windows

pytestmark = pytest.mark.timeout(120)


def test_a_batch_of_many_messages_alerts_each_anomalous_window_once(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = build_config(
        {
            "mqtt": {"port": mosquitto.port, "client_id": "scored-run"},
            "model": {"path": str(build_model(tmp_path / "m.onnx")), "provider": "cpu"},
            "batch": {"max_batch": 64, "max_wait_ms": 200.0},
            "service": {"instance_id": "scored-run", "log_format": "json"},
        },
        env={},
    )
    model = load_model(cfg.model.path, provider="cpu", warmup_batch=4)
    runs: list[int] = []
    real = windows_mod.WindowInput._publish_run

    def publish_run(self: windows_mod.WindowInput, segs: Any, *a: Any) -> None:
        runs.append(len(segs))
        real(self, segs, *a)

    monkeypatch.setattr(windows_mod.WindowInput, "_publish_run", publish_run)
    n_msgs, per_msg = 24, 4
    rng = np.random.default_rng(3)
    anomalous = rng.random((n_msgs, per_msg)) < 0.3
    anomalous[0, 0] = anomalous[5, 3] = True
    expected = {
        (f"dev{i % 3}", 100 * i + j)
        for i in range(n_msgs)
        for j in range(per_msg)
        if anomalous[i, j]
    }
    col = Collector(mosquitto.port, ["ecg/+/alert", "ecg/+/rejected"])

    async def run() -> int:
        service = Service(cfg, model)
        task = asyncio.create_task(service.run())
        while service.bridge is None or not service.bridge.connected:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # subscribed
        pub = Publisher(mosquitto.port)
        for i in range(n_msgs):  # one burst: several messages per batch
            x = windows(per_msg, anomalous[i], seed=i)
            pub.publish(f"ecg/dev{i % 3}/window", encode_binary(100 * i, 10.0 * i, x, fs=250.0))
        pub.flush()
        pub.close()
        while len(col.of("/alert")) < len(expected):
            await asyncio.sleep(0.05)
        while service.open_deliveries:
            await asyncio.sleep(0.05)  # every message acknowledged
        service.handle_exit(signal.SIGTERM)
        return await task

    assert asyncio.run(asyncio.wait_for(run(), 60)) == 0
    alerts = col.of("/alert")
    assert not col.of("/rejected")
    assert sorted((a["device_id"], a["seq"]) for a in alerts) == sorted(expected)
    for a in alerts:
        i, j = divmod(a["seq"], 100)
        assert a["ts"] == 10.0 * i + j * windows(1).shape[1] / 250.0
        assert a["score"] > a["threshold"] and a["p_value"] is None
        assert a["received_at"] <= a["published_at"]
    assert any(k > 1 for k in runs)  # the batched path handled several messages at once
    col.close()
