"""Ingest: topic + payload to a Frame, or a Reject with the code and the original payload."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from monitor.alerts import Reject
from monitor.beats import read_ucr, synthetic_beats, zscore
from monitor.ingest import Ingest
from monitor.wire import MAX_ABS_SAMPLE, Frame, encode_binary, encode_json

L = 140
GOOD = np.zeros(L, np.float32)


def bad_payloads() -> list[tuple[str, str, bytes]]:
    ok = encode_json(1, 2.0, GOOD).decode()
    header_v2 = bytearray(encode_binary(1, 2.0, GOOD[None, :]))
    struct.pack_into("<H", header_v2, 4, 2)
    return [
        ("bad_json", "ecg/d1/window", b"{nope"),
        ("bad_length", "ecg/d1/window", encode_json(1, 2.0, np.zeros(L - 1, np.float32))),
        ("non_finite", "ecg/d1/window", ok.replace("0.0", "NaN", 1).encode()),
        (
            "bad_field",
            "ecg/d1/window",
            json.dumps({"seq": "1", "ts": 2.0, "samples": [0.0] * L}).encode(),
        ),
        (
            "bad_field",
            "ecg/d1/window",
            json.dumps({"seq": 1, "ts": 2.0, "samples": ["x"] * L}).encode(),
        ),
        ("bad_frame", "ecg/d1/window", bytes(header_v2)),
        ("bad_frame", "ecg/d1/window", b"ECGW\x01\x00"),
        ("too_large", "ecg/d1/window", encode_binary(0, 0.0, np.zeros((8, L), np.float32))),
        ("bad_device_id", "ecg/bad$id/window", ok.encode()),
        ("bad_device_id", "ecg/" + "x" * 65 + "/window", ok.encode()),
    ]


@pytest.mark.parametrize(("code", "topic", "payload"), bad_payloads())
def test_each_malformed_message_becomes_its_reject(code: str, topic: str, payload: bytes) -> None:
    ingest = Ingest("ecg", L, max_bytes=4096)
    r = ingest(topic, payload, 12.5)
    assert isinstance(r, Reject), r
    assert r.code == code
    assert r.payload == payload
    assert r.received_at == 12.5
    device = topic.split("/")[1]
    assert r.device_id == device
    assert ingest.reject_topic(r) == f"ecg/{device}/rejected"


def test_good_messages_become_frames() -> None:
    ingest = Ingest("ecg", L)
    f = ingest("ecg/dev-1.a_b/window", encode_binary(9, 3.0, np.ones((3, L), np.float32), 140.0), 0)
    assert isinstance(f, Frame)
    assert (f.device_id, f.seq, f.count, f.fs) == ("dev-1.a_b", 9, 3, 140.0)
    g = ingest("ecg/d/window", encode_json(4, 1.0, np.ones((2, L), np.float32)), 0)
    assert isinstance(g, Frame) and g.count == 2 and g.seq == 4


def test_another_prefix() -> None:
    ingest = Ingest("ward7", L)
    assert isinstance(ingest("ward7/d/window", encode_json(0, 0.0, GOOD), 0), Frame)


def _accepted(x: np.ndarray) -> bool:
    ingest = Ingest("ecg", x.shape[1])
    return all(
        isinstance(ingest("ecg/d1/window", encode_binary(0, 0.0, x[i : i + 64]), 0.0), Frame)
        for i in range(0, len(x), 64)
    )


def test_the_default_sample_bound_passes_real_ecg_in_any_usual_unit(ecg5000_train: Path) -> None:
    """ECG5000 as z-scores, as millivolts (~1 mV R wave), microvolts and 24-bit ADC counts
    (~0.3 uV/LSB): all far inside limits.max_abs_sample."""
    x, _ = read_ucr(ecg5000_train)
    assert _accepted(zscore(x))
    mv = zscore(x) * 0.5  # ~1 mV peak to peak
    assert _accepted(mv) and _accepted(mv * 1000.0) and _accepted(mv * 3500.0)


def test_the_default_sample_bound_passes_synthetic_beats_and_rejects_overflow() -> None:
    beats, _ = synthetic_beats(256, length=L)
    assert _accepted(beats) and _accepted(beats * 1e4)
    ingest = Ingest("ecg", L)
    for value in (3.4e38, -3.4e38, 1e30, 2 * MAX_ABS_SAMPLE):
        r = ingest("ecg/d1/window", encode_json(0, 0.0, np.full(L, value, np.float32)), 0.0)
        assert isinstance(r, Reject) and r.code == "out_of_range"
