"""Outgoing JSON per DESIGN.md and the per-device alert policy."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from monitor.alerts import Alert, AlertPolicy, Reject, ScoreReport, Status


def test_alert_json_has_exactly_the_design_fields() -> None:
    a = Alert("d1", 17, 1764337200.25, 41.2, 26.0, "ecg5000-lstm", "v3", 63, 10.5, 10.6)
    assert json.loads(a.to_json()) == {
        "device_id": "d1",
        "seq": 17,
        "ts": 1764337200.25,
        "score": 41.2,
        "threshold": 26.0,
        "model": "ecg5000-lstm",
        "model_version": "v3",
        "peak_index": 63,
        "p_value": None,
        "received_at": 10.5,
        "published_at": 10.6,
    }
    with_p = Alert("d1", 17, 1.0, 41.2, 26.0, "m", "v", 63, 10.5, 10.6, p_value=0.004)
    assert json.loads(with_p.to_json())["p_value"] == 0.004


def test_reject_carries_the_original_payload() -> None:
    raw = b"\x00\xffnot json"
    r = json.loads(Reject("d$", "bad_json", "why", 1.0, raw).to_json())
    assert set(r) == {"device_id", "code", "reason", "received_at", "payload_b64"}
    assert base64.b64decode(r["payload_b64"]) == raw
    assert r["code"] == "bad_json"


def test_status_and_score_report() -> None:
    s = json.loads(Status("online", "i1", "m", "v", 5.0).to_json())
    assert s == {
        "state": "online",
        "instance_id": "i1",
        "model": "m",
        "model_version": "v",
        "started_at": 5.0,
    }
    r = json.loads(ScoreReport("d", 3, 1.0, (1.0, 2.0), 1.5, "m", "v", 2.0, 3.0).to_json())
    assert r["count"] == 2 and r["scores"] == [1.0, 2.0] and r["seq"] == 3


def test_default_policy_alerts_every_anomalous_window() -> None:
    p = AlertPolicy()
    flags = np.array([True, False, True, True])
    assert not p.active
    assert p.admit("d", flags, 0.0).tolist() == flags.tolist()


def test_min_consecutive_needs_k_in_a_row_per_device() -> None:
    p = AlertPolicy(min_consecutive=3)
    assert p.admit("a", np.array([True, True]), 0.0).tolist() == [False, False]
    assert p.admit("b", np.array([True, True, True]), 0.0).tolist() == [False, False, True]
    # the run of "a" continues across calls; a normal window resets it
    assert p.admit("a", np.array([True, True, False, True]), 0.0).tolist() == [
        True,
        True,
        False,
        False,
    ]


def test_cooldown_suppresses_repeats_of_one_device() -> None:
    p = AlertPolicy(cooldown_s=10.0)
    assert p.admit("a", np.array([True, True]), 100.0).tolist() == [True, False]
    assert p.admit("b", np.array([True]), 105.0).tolist() == [True]
    assert p.admit("a", np.array([True]), 105.0).tolist() == [False]
    assert p.admit("a", np.array([True]), 110.0).tolist() == [True]


def test_policy_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        AlertPolicy(min_consecutive=0)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 100, 786_000, 1 << 20])
@pytest.mark.parametrize("limit", [300, 4096, 1 << 20])
def test_reject_is_cut_to_fit_and_says_so(size: int, limit: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    r = Reject('dev-é"', "too_large", "reason", 1.5, payload)
    out = r.to_json(limit)
    obj = json.loads(out)
    copy = base64.b64decode(obj["payload_b64"])
    full = len(r.to_json())
    if full <= limit:
        assert out == r.to_json() and copy == payload and "truncated" not in obj
    else:
        assert len(out) <= limit
        assert obj["truncated"] is True and obj["payload_bytes"] == size
        assert payload.startswith(copy)
        assert len(out) > limit - 8  # as much of the payload as fits (base64: 4 per 3 bytes)


def test_score_report_splits_into_consecutive_parts_that_fit() -> None:
    scores = tuple(float(i) + 0.123456789 for i in range(1000))
    report = ScoreReport("d1", 50, 100.0, (*scores[:-1], None), 26.0, "m", "v", 1.0, 2.0)
    whole = report.parts(1 << 20, lambda i: 100.0 + i)
    assert whole == [report.to_json()]
    parts = [json.loads(p) for p in report.parts(2000, lambda i: 100.0 + i)]
    assert len(parts) > 1 and all(len(json.dumps(p, separators=(",", ":"))) <= 2000 for p in parts)
    seqs = [p["seq"] + i for p in parts for i in range(p["count"])]
    assert seqs == list(range(50, 1050))
    assert all(p["ts"] == 100.0 + (p["seq"] - 50) for p in parts)
    assert [s for p in parts for s in p["scores"]] == [*scores[:-1], None]


def test_status_carries_an_alarm_storm_only_when_there_was_one() -> None:
    assert "alarm_storm" not in json.loads(Status("online", "i", "m", "v", 1.0).to_json())
    storm = {"scope": "fleet", "likely_cause": "model and data do not match"}
    assert json.loads(Status("online", "i", "m", "v", 1.0, storm).to_json())["alarm_storm"] == storm
