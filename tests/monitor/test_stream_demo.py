"""`ecg-monitor demo --mode stream` and `simulate --mode stream` end to end with a real
mosquitto: the beat-level summary and the per-beat ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from monitor.broker import BrokerAddress, ClientOptions, connect
from monitor.frontend.segment import Segmentation
from monitor.stream_sim import StreamFleet, load_source, read_truth
from monitor.stream_wire import decode_stream
from tests.brokers import MOSQUITTO, Mosquitto
from tests.monitor.daemon import ROOT
from tests.onnx_models import build_stream_model

pytestmark = pytest.mark.timeout(240)


def test_demo_stream_mode_ends_with_a_beat_level_summary(tmp_path: Path) -> None:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    seg = Segmentation(context=("pre_rr_s", "local_rr_s"))
    model = build_stream_model(tmp_path / "s.onnx", seg.to_json(), context=2, threshold=58.5)
    summary, truth = tmp_path / "summary.json", tmp_path / "truth.csv"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "demo",
            "--mode",
            "stream",
            "--model",
            str(model),
            "--duration",
            "12",
            "--devices",
            "3",
            "--speed",
            "2",
            "--no-live",
            "--embedded-broker",
            "mosquitto",
            "--summary-json",
            str(summary),
            "--ground-truth",
            str(truth),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ecg-monitor demo summary (streams)" in out.stderr  # stdout carries the alerts only
    s = json.loads(summary.read_text())
    rows = read_truth(truth)
    assert s["truth_beats"] == len(rows) > 30  # 3 devices x ~24 s of signal
    assert s["sensitivity"] >= 0.9 and s["positive_predictivity"] >= 0.9
    assert s["alerts"] == sum(s["alerts_by_class"].values())
    assert {r["device_id"] for r in rows} == {"sim-0000", "sim-0001", "sim-0002"}


def test_stream_fleet_chunks_decode_to_the_recording(fresh_mosquitto: Mosquitto) -> None:
    """Every chunk the fleet publishes (f32, i16, json) decodes to the recording's samples."""
    recs = load_source(
        "synthetic",
        devices=2,
        records=None,
        seconds=5,
        fs=250.0,
        seed=1,
        anomaly_rate=0.1,
        artefacts=0,
        lead_off=0,
    )
    for i, fmt in enumerate(("f32", "i16", "json")):
        got: list[paho.MQTTMessage] = []
        sub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        sub.on_message = lambda _c, _u, m, got=got: got.append(m)
        sub.connect("127.0.0.1", fresh_mosquitto.port)
        sub.subscribe(f"f{i}/+/stream", qos=1)
        sub.loop_start()
        time.sleep(0.3)
        pub = connect(ClientOptions(BrokerAddress("127.0.0.1", fresh_mosquitto.port)), f"p{i}")
        fleet = StreamFleet(recs, chunk_s=0.5, speed=0, fmt=fmt, prefix=f"f{i}")
        fleet.run(pub)
        assert fleet.wait_acked(10)
        deadline = time.monotonic() + 10
        while len(got) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        pub.disconnect()
        pub.loop_stop()
        sub.loop_stop()
        sub.disconnect()
        assert len(got) == 2 * 10
        for m in got:
            dev = m.topic.split("/")[1]
            c = decode_stream(bytes(m.payload), dev)
            want = recs[int(dev[-4:])].signal_mv[c.start : c.end]
            np.testing.assert_allclose(c.samples_mv, want, atol=1 / 400 if fmt == "i16" else 0)
            assert c.fs == 250.0
