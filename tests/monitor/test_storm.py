"""The alarm-storm guard: once per storm, per device and for the fleet, against the model's
calibrated false-alarm rate; bounded memory."""

from __future__ import annotations

import pytest

from monitor.storm import FPR_FACTOR, LIKELY_CAUSE, Storm, StormGuard, calibrated_fpr


def feed_n(g: StormGuard, device: str, n: int, every: int) -> list[Storm]:
    """n windows one by one, every `every`-th of them an alert (0 = none)."""
    out: list[Storm] = []
    for i in range(n):
        out += g.feed(device, 1, int(every > 0 and i % every == 0))
    return out


def test_a_device_alerting_on_most_windows_is_reported_once_naming_the_cause() -> None:
    g = StormGuard(0.002, device_windows=100, fleet_windows=0, min_share=0.5)
    storms = feed_n(g, "d1", 1000, every=1)  # 100 % alerts for 10 blocks
    assert len(storms) == 1
    s = storms[0]
    assert s.scope == "device" and s.device_id == "d1" and s.alert_share == 1.0
    assert s.likely_cause == LIKELY_CAUSE == "model and data do not match"
    assert s.windows == 100 and s.fpr == 0.002


def test_calibrated_alert_rates_and_real_arrhythmia_runs_below_the_limit_are_quiet() -> None:
    g = StormGuard(0.01, device_windows=100, fleet_windows=1000, min_share=0.5)
    assert feed_n(g, "d1", 5000, every=100) == []  # 1 %: what the model was calibrated for
    assert feed_n(g, "d2", 5000, every=3) == []  # 33 % (trigeminy) is below 0.5


def test_the_limit_is_far_above_the_calibrated_rate() -> None:
    assert StormGuard(0.002, min_share=0.5).limit == 0.5
    assert StormGuard(0.08, min_share=0.5).limit == pytest.approx(FPR_FACTOR * 0.08)
    assert StormGuard(None, min_share=0.3).limit == 0.3  # no calibration: the share alone


def test_a_storm_ends_below_half_the_limit_and_a_new_one_is_reported_again() -> None:
    g = StormGuard(0.001, device_windows=10, fleet_windows=0, min_share=0.6)
    assert len(feed_n(g, "d1", 50, every=1)) == 1
    assert feed_n(g, "d1", 10, every=2) == []  # 50 %: still above half the limit, same storm
    assert feed_n(g, "d1", 30, every=0) == []  # quiet: the storm is over
    assert len(feed_n(g, "d1", 10, every=1)) == 1


def test_the_fleet_storm_is_seen_when_no_single_device_has_enough_windows() -> None:
    g = StormGuard(0.002, device_windows=100, fleet_windows=200, min_share=0.5)
    storms = [s for d in range(100) for s in g.feed(f"d{d}", 4, 4)]
    assert [(s.scope, s.device_id) for s in storms] == [("fleet", None)]


def test_memory_is_bounded_by_max_devices() -> None:
    g = StormGuard(0.002, device_windows=100, fleet_windows=0, max_devices=50)
    for d in range(10_000):
        g.feed(f"d{d}", 1, 1)
    assert g.devices == 50


def test_whole_messages_of_many_windows_count_as_many_windows() -> None:
    g = StormGuard(0.002, device_windows=200, fleet_windows=0)
    assert g.feed("d1", 150, 150) == []
    assert len(g.feed("d1", 150, 150)) == 1


@pytest.mark.parametrize(
    ("calibration", "fpr"),
    [
        ('{"method": "normal_quantile", "fpr": 0.002, "threshold": 18.5}', 0.002),
        ('{"method": "fixed"}', None),
        ('{"fpr": 2}', None),
        ('{"fpr": true}', None),
        ("not json", None),
        ("[]", None),
    ],
)
def test_calibrated_fpr_from_model_metadata(calibration: str, fpr: float | None) -> None:
    assert calibrated_fpr({"ecg.calibration": calibration}) == fpr
    assert calibrated_fpr({}) is None
