"""Alarm-storm guard: a device (or the fleet) alerting far more often than the model's
calibrated false-alarm rate says it should, which mostly means the model and the data do not
match (another kind of signal, units or preprocessing than the model was trained on).

Counts run in consecutive blocks of scored windows, per device and over all devices. A block
whose alert share reaches `limit` = max(min_share, FPR_FACTOR x fpr) starts a storm, reported
once; a later block under limit / 2 ends it, so a new storm is reported again. Memory is a few
integers per device, for at most `max_devices` devices (least recently seen dropped first).
A storm is a notice: alerts still go out (a patient in bigeminy alerts on half the beats).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Literal

LIKELY_CAUSE = "model and data do not match"
FPR_FACTOR = 10.0  # a storm is at least this many times the calibrated false-alarm rate

Scope = Literal["device", "fleet"]


def calibrated_fpr(metadata: dict[str, str]) -> float | None:
    """The false-alarm rate the model's threshold was calibrated for (`ecg.calibration` fpr)."""
    try:
        fpr = json.loads(metadata.get("ecg.calibration", "")).get("fpr")
    except (ValueError, AttributeError):
        return None
    if isinstance(fpr, int | float) and not isinstance(fpr, bool) and 0 < fpr < 1:
        return float(fpr)
    return None


@dataclass(frozen=True, slots=True)
class Storm:
    """One alarm storm as published: `device_id` is None for the fleet."""

    scope: Scope
    device_id: str | None
    alert_share: float
    windows: int
    alerts: int
    fpr: float | None
    limit: float
    likely_cause: str = LIKELY_CAUSE

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True)
class _Block:
    windows: int = 0
    alerts: int = 0
    storming: bool = False


class StormGuard:
    """Feed it each device's scored windows and alerts; it returns the storms that start."""

    def __init__(
        self,
        fpr: float | None,
        *,
        device_windows: int = 200,
        fleet_windows: int = 2000,
        min_share: float = 0.5,
        max_devices: int = 10_000,
    ) -> None:
        if device_windows < 0 or fleet_windows < 0 or not 0 < min_share <= 1 or max_devices < 1:
            raise ValueError("windows >= 0, 0 < min_share <= 1, max_devices >= 1")
        self.device_windows = device_windows
        self.fleet_windows = fleet_windows
        self.min_share = min_share
        self.max_devices = max_devices
        self.limit = min_share
        self.fpr = fpr
        self._devices: OrderedDict[str, _Block] = OrderedDict()
        self._fleet = _Block()

    @property
    def fpr(self) -> float | None:
        return self._fpr

    @fpr.setter
    def fpr(self, fpr: float | None) -> None:
        """A new model brings its own calibration."""
        self._fpr = fpr
        self.limit = min(1.0, max(self.min_share, FPR_FACTOR * fpr if fpr else 0.0))

    @property
    def devices(self) -> int:
        return len(self._devices)

    def feed(self, device_id: str, windows: int, alerts: int) -> list[Storm]:
        """`windows` scored windows of one device, `alerts` of them over the threshold."""
        out: list[Storm] = []
        if windows <= 0:
            return out
        if self.device_windows:
            block = self._devices.pop(device_id, None) or _Block()
            self._devices[device_id] = block  # most recently seen last
            if len(self._devices) > self.max_devices:
                self._devices.popitem(last=False)
            storm = self._count(
                block, windows, alerts, size=self.device_windows, scope="device", dev=device_id
            )
            if storm is not None:
                out.append(storm)
        if self.fleet_windows:
            storm = self._count(
                self._fleet, windows, alerts, size=self.fleet_windows, scope="fleet", dev=None
            )
            if storm is not None:
                out.append(storm)
        return out

    def _count(
        self, block: _Block, windows: int, alerts: int, *, size: int, scope: Scope, dev: str | None
    ) -> Storm | None:
        block.windows += windows
        block.alerts += alerts
        if block.windows < size:
            return None
        n, k = block.windows, block.alerts
        block.windows = block.alerts = 0
        share = k / n
        if block.storming:
            block.storming = share >= self.limit / 2
            return None
        if share >= self.limit:
            block.storming = True
            return Storm(scope, dev, round(share, 4), n, k, self.fpr, self.limit)
        return None
