"""A failure while handling one batch's results (a bug, injected here) rejects that batch's
messages as internal_error with their payloads, and the pipeline goes on. The Service runs in
this process against a real mosquitto, so the fault can be injected."""

from __future__ import annotations

import asyncio
import base64
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor import alerts
from monitor.config import build_config
from monitor.engine import load_model
from monitor.service import Service
from monitor.wire import encode_json
from tests.brokers import Mosquitto
from tests.monitor.daemon import Collector, Publisher
from tests.onnx_models import build_model, windows

pytestmark = pytest.mark.timeout(120)


def test_a_batch_that_fails_is_rejected_as_internal_error_and_scoring_goes_on(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = build_config(
        {
            "mqtt": {"port": mosquitto.port, "client_id": "batch-failure"},
            "model": {"path": str(build_model(tmp_path / "m.onnx")), "provider": "cpu"},
            "batch": {"max_wait_ms": 0.0},
            "service": {"instance_id": "batch-failure", "log_format": "json"},
        },
        env={},
    )
    model = load_model(cfg.model.path, provider="cpu", warmup_batch=4)
    real = alerts.Alert.to_json

    def to_json(self: alerts.Alert) -> bytes:
        if self.device_id == "poison":
            raise RuntimeError("injected")
        return real(self)

    monkeypatch.setattr(alerts.Alert, "to_json", to_json)
    real_encode = alerts.AlertEncoder.encode  # the batch path the daemon uses for alerts

    def encode(self: alerts.AlertEncoder, device_ids: Sequence[str], **kw: Any) -> list[bytes]:
        if "poison" in device_ids:
            raise RuntimeError("injected")
        return real_encode(self, device_ids, **kw)

    monkeypatch.setattr(alerts.AlertEncoder, "encode", encode)
    col = Collector(mosquitto.port, ["ecg/+/alert", "ecg/+/rejected"])
    bad = windows(1, np.ones(1, bool), seed=1)[0]
    poison = encode_json(7, 7.0, bad)

    async def run() -> int:
        service = Service(cfg, model)
        task = asyncio.create_task(service.run())
        while service.bridge is None or not service.bridge.connected:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # subscribed
        pub = Publisher(mosquitto.port)
        pub.publish("ecg/poison/window", poison)
        pub.flush()
        while not col.of("/rejected"):
            await asyncio.sleep(0.05)
        for seq in range(3):  # the pipeline is still there
            pub.publish("ecg/after/window", encode_json(seq, 0.0, bad))
        pub.close()
        while len(col.of("/alert")) < 3:
            await asyncio.sleep(0.05)
        service.handle_exit(signal.SIGTERM)
        return await task

    assert asyncio.run(asyncio.wait_for(run(), 60)) == 0  # and it drained cleanly
    (reject,) = col.of("/rejected")
    assert reject["code"] == "internal_error" and reject["device_id"] == "poison"
    assert base64.b64decode(reject["payload_b64"]) == poison
    assert sorted(a["seq"] for a in col.of("/alert")) == [0, 1, 2]
    col.close()
