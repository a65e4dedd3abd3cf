"""Outgoing messages (alert, reject, scores, status) and the per-device alert policy.

Each message is a frozen dataclass that serialises to the JSON of DESIGN.md.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np

from monitor.errors import RejectCode


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class Alert:
    """One anomalous window or beat: ecg/<device_id>/alert.

    A beat (source "stream") has seq = its R-peak sample index, ts = that sample's device time,
    and also `rr_s` (the RR interval before it) and `hr_bpm`."""

    device_id: str
    seq: int
    ts: float
    score: float
    threshold: float
    model: str
    model_version: str
    peak_index: int
    received_at: float
    published_at: float
    p_value: float | None = None
    source: str = "window"
    rr_s: float | None = None
    hr_bpm: float | None = None

    def to_json(self) -> bytes:
        d: dict[str, object] = {
            "device_id": self.device_id,
            "seq": self.seq,
            "ts": self.ts,
            "score": self.score,
            "threshold": self.threshold,
            "model": self.model,
            "model_version": self.model_version,
            "peak_index": self.peak_index,
            # every alert carries p_value (DESIGN.md); null for a model without calibration
            # scores (monitor.calibration)
            "p_value": self.p_value,
            "received_at": self.received_at,
            "published_at": self.published_at,
        }
        if self.source != "window":
            d["source"] = self.source
            d["rr_s"] = self.rr_s
            d["hr_bpm"] = self.hr_bpm
        return _dumps(d)


class AlertEncoder:
    """Alert JSON for many alerts of one model at once, byte for byte what `Alert.to_json` gives.

    The strings that are the same for every alert of a batch (threshold, model, version) are
    encoded once; device ids are `[A-Za-z0-9_.-]` (validated at ingest), so they need no JSON
    escaping; floats are `repr`, as `json.dumps` writes them. A non-finite value takes the
    dataclass path, which refuses it as before.
    """

    def __init__(self, threshold: float, model: str, model_version: str) -> None:
        self.threshold, self.model, self.model_version = threshold, model, model_version
        self._finite_threshold = math.isfinite(threshold)
        self._middle = (
            f',"threshold":{threshold!r},"model":{json.dumps(model)},'
            f'"model_version":{json.dumps(model_version)},"peak_index":'
        )

    def encode(
        self,
        device_ids: Sequence[str],
        *,
        seqs: Sequence[int],
        ts: Sequence[float],
        scores: Sequence[float],
        peaks: Sequence[int],
        received_at: Sequence[float],
        published_at: float,
        p_values: Sequence[float | None] | None = None,
    ) -> list[bytes]:
        mid, tail = self._middle, f',"published_at":{published_at!r}}}'
        fast = self._finite_threshold and math.isfinite(published_at)
        pvs = [None] * len(device_ids) if p_values is None else p_values
        out: list[bytes] = []
        for dev, seq, t, score, peak, rec, pv in zip(
            device_ids, seqs, ts, scores, peaks, received_at, pvs, strict=True
        ):
            pv_ok = pv is None or math.isfinite(pv)
            if fast and pv_ok and math.isfinite(t) and math.isfinite(score) and math.isfinite(rec):
                pj = "null" if pv is None else repr(pv)
                out.append(
                    f'{{"device_id":"{dev}","seq":{seq},"ts":{t!r},"score":{score!r}{mid}'
                    f'{peak},"p_value":{pj},"received_at":{rec!r}{tail}'.encode()
                )
            else:
                alert = Alert(
                    dev, seq, t, score, self.threshold, self.model, self.model_version, peak,
                    rec, published_at, p_value=pv,
                )  # fmt: skip
                out.append(alert.to_json())
        return out


@dataclass(frozen=True, slots=True)
class Reject:
    """A message that could not become windows: ecg/<device_id>/rejected."""

    device_id: str
    code: RejectCode
    reason: str
    received_at: float
    payload: bytes

    def to_json(self, max_bytes: int | None = None) -> bytes:
        """The reject; when it would exceed `max_bytes` (what the broker's packet limit leaves
        for a payload) the payload is cut to fit, and `truncated` / `payload_bytes` say so."""
        obj: dict[str, object] = {
            "device_id": self.device_id,
            "code": self.code,
            "reason": self.reason,
            "received_at": self.received_at,
            "payload_b64": base64.b64encode(self.payload).decode("ascii"),
        }
        full = _dumps(obj)
        if max_bytes is None or len(full) <= max_bytes:
            return full
        obj.update(payload_b64="", truncated=True, payload_bytes=len(self.payload))
        room = max_bytes - len(_dumps(obj))  # base64 needs no JSON escaping
        keep = max(room, 0) // 4 * 3
        obj["payload_b64"] = base64.b64encode(self.payload[:keep]).decode("ascii")
        return _dumps(obj)


@dataclass(frozen=True, slots=True)
class ScoreReport:
    """Scores of every window of one incoming message (seq, seq+1, ...): ecg/<device_id>/score.

    A window whose score is not finite is rejected as `out_of_range`; its entry here is null."""

    device_id: str
    seq: int
    ts: float
    scores: tuple[float | None, ...]
    threshold: float
    model: str
    model_version: str
    received_at: float
    published_at: float

    def to_json(self) -> bytes:
        d = asdict(self)
        d["count"] = len(self.scores)
        d["scores"] = list(self.scores)
        return _dumps(d)

    def parts(self, max_bytes: int, window_ts: Callable[[int], float]) -> list[bytes]:
        """The report as JSON messages of at most `max_bytes` each: split into reports of
        consecutive windows (seq, ts of each part's first window) when one would not fit."""
        out: list[bytes] = []
        todo = [(0, len(self.scores))]
        while todo:
            lo, hi = todo.pop()
            part = replace(self, seq=self.seq + lo, ts=window_ts(lo), scores=self.scores[lo:hi])
            data = part.to_json()
            if len(data) <= max_bytes or hi - lo == 1:
                out.append(data)  # a single window that does not fit is the bridge's to refuse
            else:
                mid = (lo + hi) // 2
                todo += [(mid, hi), (lo, mid)]
        return out


@dataclass(frozen=True, slots=True)
class BeatScores:
    """Scores of the beats one stream chunk completed: ecg/<device_id>/score (publish_scores).

    `seqs` are R-peak sample indices (not consecutive), `ts` their device times."""

    device_id: str
    seqs: tuple[int, ...]
    ts: tuple[float, ...]
    scores: tuple[float | None, ...]  # None: the model gave no finite score
    threshold: float
    model: str
    model_version: str
    received_at: float
    published_at: float

    def to_json(self) -> bytes:
        d = asdict(self)
        d["source"] = "stream"
        d["count"] = len(self.scores)
        for key in ("seqs", "ts", "scores"):
            d[key] = list(d[key])
        return _dumps(d)


QualityState = Literal["learning", "good", "noisy", "lead_off", "gap"]
QUALITY_STATES: tuple[str, ...] = ("learning", "good", "noisy", "lead_off", "gap")


@dataclass(frozen=True, slots=True)
class Quality:
    """A stream's signal quality changed: ecg/<device_id>/quality (QoS 1, retained)."""

    device_id: str
    state: str
    since: int  # sample index where the state began
    since_ts: float
    reason: str

    def __post_init__(self) -> None:
        if self.state not in QUALITY_STATES:
            raise ValueError(f"quality state {self.state!r} is not one of {QUALITY_STATES}")

    def to_json(self) -> bytes:
        return _dumps(asdict(self))


@dataclass(frozen=True, slots=True)
class Status:
    """Daemon status, retained on ecg-monitor/<instance_id>/status; "offline" is the last will."""

    state: str
    instance_id: str
    model: str
    model_version: str
    started_at: float
    alarm_storm: dict[str, object] | None = None  # the latest alarm storm seen (monitor.storm)

    def to_json(self) -> bytes:
        d = asdict(self)
        if self.alarm_storm is None:
            del d["alarm_storm"]
        return _dumps(d)


class AlertPolicy:
    """Per device: alert after `min_consecutive` anomalous windows in a row, then at most one
    alert per `cooldown_s` (seconds of receipt time). Both off (1, 0) by default."""

    def __init__(self, min_consecutive: int = 1, cooldown_s: float = 0.0) -> None:
        if min_consecutive < 1 or cooldown_s < 0:
            raise ValueError("min_consecutive >= 1 and cooldown_s >= 0")
        self.min_consecutive = min_consecutive
        self.cooldown_s = cooldown_s
        self._run: dict[str, int] = {}
        self._last_alert: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return self.min_consecutive > 1 or self.cooldown_s > 0

    def admit(self, device_id: str, anomalous: np.ndarray, now: float) -> np.ndarray:
        """Which of these consecutive windows of one device become alerts (bool array)."""
        if not self.active:
            return anomalous
        out = np.zeros(anomalous.shape, dtype=bool)
        run = self._run.get(device_id, 0)
        last = self._last_alert.get(device_id)
        for i, flag in enumerate(anomalous.tolist()):
            if not flag:
                run = 0
                continue
            run += 1
            if run >= self.min_consecutive and (last is None or now - last >= self.cooldown_s):
                out[i] = True
                last = now
        self._run[device_id] = run
        if last is not None:
            self._last_alert[device_id] = last
        return out
