"""What every input kind shares: the batcher, the alert policy, metrics and the MQTT bridge.

An input kind (`monitor.windows`, `monitor.streams`) decodes its messages, puts rows into the
shared batcher with a token of its own, and is handed back its rows' scores (`Input.scored`);
it alone decides what to publish and when its messages are acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from monitor.alerts import AlertPolicy
from monitor.batcher import Batcher, Segment
from monitor.config import Config
from monitor.engine import Model
from monitor.metrics import Metrics
from monitor.mqtt import Message, MqttBridge
from monitor.scorer import Scores
from monitor.storm import Storm, StormGuard


class Input(Protocol):
    """One input kind: its subscription, message handler and result handler."""

    @property
    def topic_filter(self) -> str: ...

    def accepts(self, topic: str) -> bool:
        """Whether a message on this topic is this input's."""
        ...

    def on_message(self, msg: Message) -> None: ...

    def scored(
        self, seg: Segment[Token], scores: Scores, model: Model, threshold: float, now: float
    ) -> None:
        """Rows [seg.offset, seg.offset + seg.count) of `scores` are this segment's."""
        ...

    def scored_run(
        self,
        segs: Sequence[Segment[Token]],
        scores: Scores,
        model: Model,
        threshold: float,
        now: float,
    ) -> None:
        """Consecutive segments of one batch that are all this input's: what `scored` on each
        in turn does, which an input may do once for the run (per batch, not per message)."""
        ...

    def busy(self) -> int:
        """Rows or publishes this input still waits for (draining waits until 0)."""
        ...

    def failed(self, seg: Segment[Token], error: Exception) -> None:
        """The batch holding this segment failed after inference: settle its rows."""
        ...

    async def background(self) -> None:
        """Housekeeping between messages (runs as a task while the service runs)."""
        ...


class Token(Protocol):
    """The bookkeeping a row source puts into the batcher; `owner` gets its scores."""

    @property
    def owner(self) -> Input: ...


class Pipeline:
    """Shared handles; `bridge` is set once the service has connected."""

    def __init__(
        self,
        cfg: Config,
        metrics: Metrics,
        batcher: Batcher[Token],
        storms: StormGuard,
        on_storm: Callable[[Storm], None],
    ) -> None:
        self.cfg = cfg
        self.storms = storms
        self._on_storm = on_storm
        self.metrics = metrics
        self.batcher = batcher
        self.prefix = cfg.mqtt.topic_prefix
        self.policy = AlertPolicy(cfg.alerts.min_consecutive, cfg.alerts.cooldown_s)
        self.bridge: MqttBridge | None = None
        self.draining = False

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        assert self.bridge is not None
        self.bridge.publish(topic, payload, qos=qos, retain=retain, on_done=on_done)

    def max_payload(self, topic: str) -> int:
        """The largest payload a QoS 1 publish to `topic` may carry (broker packet limit)."""
        assert self.bridge is not None
        return self.bridge.max_payload(topic)

    def feed_storm(self, device_id: str, scored: int, anomalous: int) -> None:
        """Alarm-storm accounting (monitor.storm) for one device's scored rows."""
        for storm in self.storms.feed(device_id, scored, anomalous):
            self._on_storm(storm)

    def ack(self, msg: Message) -> None:
        assert self.bridge is not None
        self.bridge.ack(msg)

    def admitted(self, rows: int) -> None:
        """Backpressure after rows were queued: stop reading while the batcher is full."""
        if self.batcher.queued >= self.cfg.limits.queue_windows and self.bridge is not None:
            self.bridge.pause_reading()
