"""Ingest: one MQTT message (topic + payload) -> a validated Frame, or a Reject.

Decoding is the shared codec in `monitor.wire`; this module adds the topic and the reject.
"""

from __future__ import annotations

from monitor import wire
from monitor.alerts import Reject
from monitor.errors import PayloadError
from monitor.wire import Frame

# A topic level that is not a device id still names where the reject goes, cut to this many
# characters (MQTT topics may be 65,535 bytes; `<prefix>/<level>/rejected` must stay publishable).
REJECT_LEVEL_CHARS = 256


class Ingest:
    """Turns `<prefix>/<device_id>/window` messages into Frames of the model's window length."""

    def __init__(
        self,
        prefix: str,
        window_length: int,
        max_bytes: int = 1 << 20,
        max_windows: int = 4096,
        max_abs: float = wire.MAX_ABS_SAMPLE,
    ) -> None:
        self.prefix = prefix
        self.window_length = window_length
        self.max_bytes = max_bytes
        self.max_windows = max_windows
        self.max_abs = max_abs
        self._head = prefix + "/"
        self._tail = "/window"

    def device_of(self, topic: str) -> str:
        """The raw device level of a window topic (valid or not): the reject goes there."""
        if topic.startswith(self._head) and topic.endswith(self._tail):
            level = topic[len(self._head) : -len(self._tail)]
        else:
            level = topic.rsplit("/", 2)[-2] if topic.count("/") >= 2 else ""
        return level[:REJECT_LEVEL_CHARS]

    def __call__(self, topic: str, payload: bytes, received_at: float) -> Frame | Reject:
        try:
            device_id = wire.parse_topic(topic, self.prefix)
            return wire.decode(
                payload,
                device_id,
                window_length=self.window_length,
                max_bytes=self.max_bytes,
                max_windows=self.max_windows,
                max_abs=self.max_abs,
            )
        except PayloadError as e:
            return Reject(self.device_of(topic), e.code, e.reason, received_at, bytes(payload))

    def reject_topic(self, reject: Reject) -> str:
        return f"{self.prefix}/{reject.device_id}/rejected"
