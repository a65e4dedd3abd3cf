"""Ingest: topic + payload to a Frame, or a Reject with the code and the original payload."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from monitor.alerts import Reject
from monitor.ingest import Ingest
from monitor.wire import Frame, encode_binary, encode_json

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
