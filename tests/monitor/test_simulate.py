"""The simulated fleet: payloads the daemon's codec accepts, ground truth that matches them."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor import wire
from monitor.beats import read_ucr, synthetic_beats
from monitor.broker import BrokerAddress, ClientOptions, connect
from monitor.simulate import BeatPool, Fleet, Picker, SimulateError, read_ground_truth
from tests.brokers import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
POOL = BeatPool.from_source("synthetic:200", seed=3)


@settings(max_examples=60, deadline=None)
@given(
    seq=st.integers(0, 2**40),
    ts=st.floats(0, 2e9, allow_nan=False),
    idx=st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=5),
    fmt=st.sampled_from(["json", "binary"]),
)
def test_payload_is_the_wire_encoding(seq: int, ts: float, idx: list[int], fmt: str) -> None:
    """Pre-encoded rows give byte for byte what wire.encode_* gives, and decode back."""
    fleet = Fleet(POOL, devices=1, fmt=fmt)  # type: ignore[arg-type]
    rows = POOL.x[idx]
    one = rows[0] if len(idx) == 1 else rows
    expected = (
        wire.encode_json(seq, ts, one) if fmt == "json" else wire.encode_binary(seq, ts, rows)
    )
    payload = fleet.payload(seq, ts, idx)
    assert payload == expected
    frame = wire.decode(payload, "d", window_length=POOL.length)
    assert (frame.seq, frame.ts, frame.count) == (seq, ts, len(idx))
    np.testing.assert_array_equal(frame.samples, rows)


def test_picker_keeps_the_anomaly_fraction() -> None:
    picker = Picker(POOL, devices=1, fraction=0.3, seed=0)
    idx = picker.take(0, 5000)
    share = float(np.mean(POOL.y[idx] != 1))
    assert 0.27 < share < 0.33


def test_picker_without_fraction_replays_in_order_from_spread_offsets() -> None:
    picker = Picker(POOL, devices=4, fraction=None, seed=0)
    assert picker.take(1, 3) == [50, 51, 52]
    assert picker.take(1, 2) == [53, 54]
    assert picker.take(3, 60)[-1] == (150 + 59) % 200


def test_bad_sources_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SimulateError):
        BeatPool.from_source("nonsense")
    with pytest.raises(SimulateError):
        BeatPool.from_source(f"ucr:{tmp_path / 'missing.arff'}")
    only_normal = BeatPool.build("n", POOL.x[POOL.y == 1], POOL.y[POOL.y == 1])
    with pytest.raises(SimulateError):
        Picker(only_normal, devices=1, fraction=0.2, seed=0)


class Collector:
    """Subscribes to every window and keeps the decoded frames."""

    def __init__(self, broker: Mosquitto, prefix: str = "ecg") -> None:
        self.prefix = prefix
        self.frames: list[wire.Frame] = []
        self.lock = threading.Lock()
        self.client = connect(
            ClientOptions(BrokerAddress(broker.host, broker.port)),
            f"collector-{time.time_ns()}",
            on_message=self.on_message,
            subscriptions=[(f"{prefix}/+/window", 1)],
        )
        time.sleep(0.2)  # SUBACK

    def on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        device = wire.parse_topic(msg.topic, self.prefix)
        frame = wire.decode(msg.payload, device, window_length=140)
        with self.lock:
            self.frames.append(frame)

    def windows(self) -> dict[tuple[str, int], np.ndarray]:
        with self.lock:
            return {
                (f.device_id, f.seq + i): f.samples[i] for f in self.frames for i in range(f.count)
            }

    def wait(self, n: int, timeout: float = 20.0) -> dict[tuple[str, int], np.ndarray]:
        deadline = time.monotonic() + timeout
        while len(self.windows()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.windows()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def simulate(broker: Mosquitto, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "monitor", "simulate", "--broker", f"{broker.host}:{broker.port}"]
    return subprocess.run(
        [*cmd, *extra], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


@pytest.mark.parametrize(("fmt", "k", "suffix"), [("json", 1, ".csv"), ("binary", 3, ".jsonl")])
def test_fleet_publishes_count_windows_with_matching_ground_truth(
    mosquitto: Mosquitto, tmp_path: Path, fmt: str, k: int, suffix: str
) -> None:
    """Every window arrives once per (device, seq); the ground truth labels each correctly."""
    collector = Collector(mosquitto, prefix=f"t{k}")
    truth = tmp_path / f"truth{suffix}"
    try:
        proc = simulate(
            mosquitto,
            "--devices", "4", "--rate", "0", "--count", "25", "--format", fmt,
            "--windows-per-message", str(k), "--anomaly-fraction", "0.3", "--prefix", f"t{k}",
            "--seed", "5", "--ground-truth", str(truth),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        got = collector.wait(100)
    finally:
        collector.close()
    rows = read_ground_truth(truth)
    assert len(rows) == 100 == len(got)
    assert {(r.device_id, r.seq) for r in rows} == set(got)
    assert {r.device_id for r in rows} == {"sim-0000", "sim-0001", "sim-0002", "sim-0003"}
    assert sorted(r.seq for r in rows if r.device_id == "sim-0002") == list(range(25))
    # The label names the beat that was sent: look each window up in the generator's pool.
    pool = BeatPool.from_source("synthetic", seed=5)
    label_of = {pool.x[i].tobytes(): int(pool.y[i]) for i in range(len(pool))}
    for r in rows:
        assert label_of[got[(r.device_id, r.seq)].tobytes()] == r.label
        assert r.is_anomaly == (r.label != 1)
    assert 10 <= sum(r.is_anomaly for r in rows) <= 50
    assert "windows" in proc.stderr  # progress / final line on stderr


def test_ucr_replay_labels_are_the_files_labels(
    mosquitto: Mosquitto, ecg5000_train: Path, tmp_path: Path
) -> None:
    """Replaying ECG5000 in file order: each window's label in the ground truth is its row's."""
    collector = Collector(mosquitto, prefix="ucr")
    truth = tmp_path / "truth.csv"
    try:
        proc = simulate(
            mosquitto,
            "--source", f"ucr:{ecg5000_train}", "--devices", "2", "--rate", "0",
            "--count", "60", "--prefix", "ucr", "--ground-truth", str(truth), "--quiet",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        got = collector.wait(120)
    finally:
        collector.close()
    x, y = read_ucr(ecg5000_train)
    rows = read_ground_truth(truth)
    assert len(rows) == 120
    for r in rows:
        start = 0 if r.device_id == "sim-0000" else len(x) // 2
        row = (start + r.seq) % len(x)
        assert r.label == int(y[row])
        np.testing.assert_array_equal(got[(r.device_id, r.seq)], x[row].astype(np.float32))
    assert {r.label for r in rows} != {1}  # the file's anomalies come through too


def test_rate_paces_each_device(mosquitto: Mosquitto) -> None:
    """At 20 windows/s per device for 1 s, 3 devices send about 60 windows, not all at once."""
    x, y = synthetic_beats(50, seed=1)
    fleet = Fleet(BeatPool.build("s", x, y), devices=3, rate=20.0, anomaly_fraction=0.0)
    client = connect(ClientOptions(BrokerAddress(mosquitto.host, mosquitto.port)), "pace")
    try:
        stats = fleet.run(client, duration=1.0)
        assert fleet.wait_acked(10.0)
    finally:
        client.disconnect()
        client.loop_stop()
    assert 40 <= stats.windows <= 75
    assert stats.anomalies == 0
