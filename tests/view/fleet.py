"""A simulated fleet of continuous-ECG devices for the view's tests, benchmark and screenshots.

Each device streams one lead (sum-of-Gaussians P-QRS-T beats with heart-rate variability,
baseline wander and noise, in mV) as ECGS frames (DESIGN.md) on `<prefix>/<id>/stream`, on
its own MQTT connection-free schedule over one shared paho client. A test can inject an
anomalous (wide, premature) beat or a lead-off stretch (flat line) into a device's future
signal and learn the device time of that beat.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from monitor.stream_wire import encode_stream_binary

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "ecg-synthetic-dense.onnx"

# name: (offset from R in s, amplitude mV, width s)
NORMAL = {
    "P": (-0.17, 0.15, 0.025),
    "Q": (-0.035, -0.12, 0.010),
    "R": (0.0, 1.20, 0.012),
    "S": (0.035, -0.28, 0.012),
    "T": (0.30, 0.32, 0.055),
}
WIDE = {  # a PVC: no P wave, wide tall QRS, deep inverted T
    "Q": (-0.06, -0.2, 0.03),
    "R": (0.0, 1.7, 0.04),
    "S": (0.07, -0.6, 0.04),
    "T": (0.34, -0.55, 0.07),
}


@dataclass
class StreamDevice:
    id: str
    fs: float
    hr: float
    rng: np.random.Generator
    t_origin: float  # device time of sample 0
    next_sample: int = 0
    beats: list[tuple[float, bool]] = field(default_factory=list)  # (R time from origin, wide)
    lead_off: list[tuple[float, float]] = field(default_factory=list)  # [from, to) seconds
    inject_after: float | None = None  # make the first beat after this time wide

    def _extend(self, until: float) -> None:
        last = self.beats[-1][0] if self.beats else self.rng.uniform(0.1, 0.8)
        if not self.beats:
            self.beats.append((last, False))
        while last < until:
            rr = 60.0 / self.hr * float(self.rng.normal(1.0, 0.03))
            wide = False
            if self.inject_after is not None and last + rr * 0.7 > self.inject_after:
                rr *= 0.7  # premature
                wide = True
                self.inject_after = None
            elif self.beats[-1][1]:
                rr *= 1.3  # compensatory pause after a PVC
            last += rr
            self.beats.append((last, wide))

    def samples(self, n: int) -> tuple[int, np.ndarray]:
        """The next n samples (start index, mV)."""
        start = self.next_sample
        t = (start + np.arange(n)) / self.fs
        t_end = float(t[-1])
        self._extend(t_end + 1.5)
        x = 0.04 * np.sin(2 * np.pi * 0.25 * t + sum(map(ord, self.id)) % 7)  # baseline wander
        for r, wide in self.beats:
            if r < t[0] - 1.0 or r > t_end + 1.0:
                continue
            for offset, amp, width in (WIDE if wide else NORMAL).values():
                x += amp * np.exp(-0.5 * ((t - r - offset) / width) ** 2)
        x += self.rng.normal(0.0, 0.012, n)
        for a, b in self.lead_off:
            x[(t >= a) & (t < b)] = 0.0
        self.beats = [b for b in self.beats if b[0] > t[0] - 2.0]
        self.next_sample = start + n
        return start, x.astype(np.float32)

    def now_s(self) -> float:
        """Seconds since origin of the next sample to be sent."""
        return self.next_sample / self.fs


class StreamFleet:
    """N streaming devices, each sending a chunk every `chunk_s`, paced to the wall clock."""

    def __init__(
        self,
        port: int,
        *,
        devices: int = 6,
        fs: float = 250.0,
        chunk_s: float = 0.25,
        prefix: str = "ecg",
        device_prefix: str = "bed-",
        seed: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.port, self.host = port, host
        self.fs = fs
        self.chunk = max(1, round(chunk_s * fs))
        self.prefix = prefix
        rng = np.random.default_rng(seed)
        origin = time.time()
        self.devices = [
            StreamDevice(
                f"{device_prefix}{i:03d}",
                fs,
                float(rng.uniform(58, 98)),
                np.random.default_rng(seed * 1000 + i),
                origin,
            )
            for i in range(devices)
        ]
        self.by_id = {d.id: d for d in self.devices}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.sent = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.devices]

    def start(self) -> StreamFleet:
        origin = time.time()  # device clocks agree with the wall clock from the first chunk
        for dev in self.devices:
            dev.t_origin = origin
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, name="stream-fleet", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        """Every 10 ms, send each device's chunks that are due (a loaded machine sends late,
        never fewer: a device more than a second behind skips ahead, like a real one would)."""
        period = self.chunk / self.fs
        n = len(self.devices)
        t0 = time.monotonic()
        due = [t0 + period * i / n for i in range(n)]
        while not self.stop_event.wait(0.01):
            now = time.monotonic()
            for i, dev in enumerate(self.devices):
                while due[i] <= now:
                    with self.lock:
                        start, x = dev.samples(self.chunk)
                    payload = encode_stream_binary(
                        start, dev.t_origin + start / self.fs, self.fs, x
                    )
                    if self.client.is_connected():
                        self.client.publish(f"{self.prefix}/{dev.id}/stream", payload, qos=0)
                        self.sent += 1
                    due[i] = max(due[i] + period, now - 1.0)

    def inject_wide_beat(self, device_id: str, after_s: float = 0.5) -> float:
        """Make a beat about `after_s` from now wide and premature; its R peak's device time."""
        dev = self.by_id[device_id]
        with self.lock:
            when = dev.now_s() + after_s
            dev.beats = [b for b in dev.beats if b[0] < when - 0.05]  # re-plan the future
            dev.inject_after = when
            dev._extend(when + 3.0)
            r = next(b[0] for b in dev.beats if b[1])
        return dev.t_origin + r

    def start_lead_off(self, device_id: str, seconds: float) -> tuple[float, float]:
        """A flat line from now for `seconds`; its device-time span."""
        dev = self.by_id[device_id]
        with self.lock:
            a = dev.now_s()
            dev.lead_off.append((a, a + seconds))
        return dev.t_origin + a, dev.t_origin + a + seconds

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.client.loop_stop()
        self.client.disconnect()


def stream_model(path: Path, *, threshold: float = 35.0, seconds: float = 60.0) -> Path:
    """The bundled dense model as a stream model for this fleet: the default Segmentation, a
    threshold (the fleet's normal beats score 7-17, a wide beat ~70) and, for p-values, the
    scores of this fleet's normal beats as its calibration. Needs onnx (the dev extra)."""
    import onnx  # noqa: PLC0415 (not a runtime dependency)
    import onnxruntime as ort  # noqa: PLC0415

    from monitor.frontend.segment import Segmentation  # noqa: PLC0415
    from monitor.frontend.stream import process_record  # noqa: PLC0415

    seg = Segmentation()
    sess = ort.InferenceSession(str(BUNDLED), providers=["CPUExecutionProvider"])
    scores: list[float] = []
    for i, hr in enumerate((58.0, 70.0, 84.0, 98.0)):
        dev = StreamDevice(f"cal-{i}", 250.0, hr, np.random.default_rng(100 + i), 0.0)
        _, x = dev.samples(round(seconds * 250.0))
        beats = process_record(x, 250.0, seg)
        scores += np.asarray(sess.run(["score"], {"windows": beats.windows})[0]).tolist()
    model = onnx.load(str(BUNDLED))
    props = {p.key: p.value for p in model.metadata_props}
    props["ecg.segmentation"] = seg.to_json()
    props["ecg.threshold"] = repr(threshold)
    props["ecg.calibration"] = json.dumps(
        {"method": "quantile", "n": len(scores), "scores": sorted(scores)}
    )
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path
