"""End-to-end throughput and latency of the daemon against model-only ONNX Runtime.

    .venv/bin/python bench/e2e.py                        # models/*.onnx, binary and JSON frames
    .venv/bin/python bench/e2e.py --model m.onnx --seconds 10 --frame 16 --batch 64

In one run on this machine: (1) model-only windows/s (ONNX Runtime, same model, batch and
threads as the daemon); (2) a mosquitto of its own and `ecg-monitor run` as a child process;
per payload format, (3) a publisher at the highest rate the daemon sustains for --seconds
(QoS 1, never more than 16k windows ahead of what the daemon has scored, read from its
metrics): e2e windows/s = windows published / time until the daemon scored the last one; and
(4) the same stream paced at half that rate: publish -> alert latency p50/p99, measured by a
separate subscriber process (every frame's first window is anomalous; its `ts` is the publish
time). Prints a Markdown table. Not a test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sections import update_section  # noqa: E402
from monitor.beats import synthetic_beats  # noqa: E402
from monitor.engine import Model, load_model  # noqa: E402
from monitor.wire import HEADER, MAGIC, VERSION  # noqa: E402
from tests.brokers import Mosquitto, free_port, wait_for_port  # noqa: E402


@dataclass
class Result:
    fmt: str
    max_windows_s: float
    half_rate: float
    p50_ms: float
    p99_ms: float
    alerts: int


def model_only(model: Model, batch: int, seconds: float) -> float:
    """Windows/s of back-to-back session.run calls on one batch (what the daemon's thread does)."""
    x = np.random.default_rng(0).standard_normal((batch, model.info.window_length))
    x = x.astype(np.float32)
    for _ in range(20):
        model.run(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.run(x)
        n += batch
    return n / (time.perf_counter() - t0)


def pools(model: Model, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows the model scores below its threshold, and ones far above it."""
    beats, _ = synthetic_beats(512, length=length, anomaly_fraction=0.0, seed=1)
    beats = beats.astype(np.float32)
    score = model.run(beats).score
    normal = beats[score <= model.info.threshold]
    if len(normal) == 0:
        raise SystemExit("no synthetic beat scores below the model's threshold")
    rng = np.random.default_rng(2)
    base = normal[:64]
    candidates = []
    for scale in (4.0, 8.0, 16.0, 64.0):
        bumped = base.copy()
        bumped[:, length // 3 : length // 3 + 12] += scale
        candidates.append(bumped)
    candidates += [
        base[:, ::-1].copy(),
        -base,
        rng.normal(0.0, 1.0, base.shape).astype(np.float32),
        np.sign(np.sin(np.linspace(0, 12 * np.pi, length, dtype=np.float32)))[None, :].repeat(
            64, 0
        ),
    ]
    pool = np.concatenate(candidates).astype(np.float32)
    anomalous = pool[model.run(pool).score > model.info.threshold]
    if len(anomalous) == 0:
        raise SystemExit("could not make windows the model calls anomalous")
    return normal[:64], anomalous


class Frames:
    """Pre-encoded payload parts: one anomalous window first, then normal ones."""

    def __init__(self, normal: np.ndarray, anomalous: np.ndarray, frame: int, fmt: str) -> None:
        self.frame, self.fmt = frame, fmt
        rows = np.concatenate([anomalous[:1], normal[: frame - 1]]).astype("<f4")
        if len(rows) < frame:
            rows = np.concatenate([rows, np.repeat(normal[:1], frame - len(rows), axis=0)])
        self.length = rows.shape[1]
        if fmt == "binary":
            self.body = rows.tobytes()
        else:
            self.body = json.dumps([[float(v) for v in r] for r in rows]).encode()

    def payload(self, seq: int, ts: float) -> bytes:
        if self.fmt == "binary":
            head = HEADER.pack(MAGIC, VERSION, self.frame, self.length, seq, ts, 0.0)
            return head + self.body
        return b'{"seq":%d,"ts":%r,"windows":' % (seq, ts) + self.body + b"}"


class AlertClock:
    """A separate process subscribed to alerts, recording publish->alert latency from each
    alert's `ts` (so the publisher's GIL does not delay the clock)."""

    def __init__(self, port: int) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("spawn").Process(target=_clock_main, args=(port, child))
        self.proc.start()
        if not self.conn.poll(30):
            raise SystemExit("alert clock did not subscribe")
        self.conn.recv()

    def take(self, expected: int, timeout: float = 120.0) -> list[float]:
        """The latencies recorded so far, once `expected` alerts have arrived (or timeout)."""
        self.conn.send((expected, timeout))
        return list(self.conn.recv())

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)


def _clock_main(port: int, conn: Connection) -> None:
    latencies: list[float] = []
    lock = threading.Lock()

    def on_message(client: object, userdata: object, msg: paho.MQTTMessage) -> None:
        now = time.time()
        ts = float(json.loads(msg.payload)["ts"])
        with lock:
            latencies.append(now - ts)

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = on_message
    ready = threading.Event()
    client.on_subscribe = lambda *a: ready.set()
    client.connect("127.0.0.1", port)
    client.subscribe("ecg/+/alert", qos=1)
    client.loop_start()
    ready.wait(10)
    conn.send("ready")
    while (cmd := conn.recv()) is not None:
        expected, timeout = cmd
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with lock:
                if len(latencies) >= expected:
                    break
            time.sleep(0.05)
        with lock:
            out = latencies[:]
            latencies.clear()
        conn.send(out)
    client.loop_stop()
    client.disconnect()


def scored(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r"^ecg_monitor_windows_scored_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def publish_for(
    port: int,
    frames: Frames,
    seconds: float,
    rate_windows_s: float | None,
    *,
    devices: int,
    metrics_port: int,
    backlog: int = 16384,
) -> int:
    """Publish frames (QoS 1) round-robin over devices for `seconds`; paced when a rate is given,
    else as fast as the daemon keeps up: never more than `backlog` windows ahead of what it has
    scored (so the broker's queue stays bounded). At most 1000 unacknowledged publishes (paho's
    own limit is off: it rescans every queued message per PUBACK). Returns windows published."""
    base = scored(metrics_port)
    done = {"scored": base}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            done["scored"] = scored(metrics_port)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(0)
    window = threading.Semaphore(1000)
    client.on_publish = lambda *a: window.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    seqs = [0] * devices
    sent = 0
    t0 = time.perf_counter()
    interval = frames.frame / rate_windows_s if rate_windows_s else 0.0
    i = 0
    while True:
        now = time.perf_counter()
        if now - t0 >= seconds:
            break
        if interval:
            due = t0 + i * interval
            if due > now:
                time.sleep(due - now)
        while sent - (done["scored"] - base) > backlog:
            time.sleep(0.002)
        if not window.acquire(timeout=10):
            raise SystemExit("the broker stopped acknowledging the publisher")
        d = i % devices
        client.publish(f"ecg/bench{d}/window", frames.payload(seqs[d], time.time()), qos=1)
        seqs[d] += frames.frame
        sent += frames.frame
        i += 1
    for _ in range(1000):  # every publish acknowledged
        window.acquire(timeout=60)
    stop.set()
    watcher.join()
    client.loop_stop()
    client.disconnect()
    return sent


def wait_until_scored(metrics_port: int, target: float, timeout: float = 300.0) -> float:
    """Wait until the daemon's windows_scored_total reaches target; seconds waited."""
    t0 = time.monotonic()
    while scored(metrics_port) < target:
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"the daemon scored {scored(metrics_port)} of {target} windows")
        time.sleep(0.05)
    return time.monotonic() - t0


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) * 1000.0 if values else float("nan")


def run_format(
    fmt: str, args: argparse.Namespace, broker: Mosquitto, metrics_port: int, model: Model
) -> Result:
    normal, anomalous = pools(model, model.info.window_length)
    frames = Frames(normal, anomalous, args.frame, fmt)
    clock = AlertClock(broker.port)
    # (3) the highest rate the publisher manages, for --seconds
    before, t0 = scored(metrics_port), time.perf_counter()
    published = publish_for(
        broker.port, frames, args.seconds, None, devices=args.devices, metrics_port=metrics_port
    )
    # the daemon's rate: everything published, scored, over the time until the last was scored
    wait_until_scored(metrics_port, before + published)
    max_rate = published / (time.perf_counter() - t0)
    clock.take(published // frames.frame)  # one alert per frame
    # (4) half of what the daemon managed, paced
    half = max_rate / 2
    base = scored(metrics_port)
    sent = publish_for(
        broker.port, frames, args.seconds, half, devices=args.devices, metrics_port=metrics_port
    )
    wait_until_scored(metrics_port, base + sent)
    lat = clock.take(sent // frames.frame)
    clock.close()
    return Result(
        fmt,
        max_rate,
        half,
        pct(lat, 50),
        pct(lat, 99),
        len(lat),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    default_model = next(iter(sorted((ROOT / "models").glob("*.onnx"))), None)
    ap.add_argument("--model", type=Path, default=default_model)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--batch", type=int, default=64, help="daemon max_batch (and model-only)")
    ap.add_argument("--frame", type=int, default=16, help="windows per published message")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--provider", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--formats", default="binary,json")
    ap.add_argument(
        "--benchmarks", type=Path, help="also write the table into this Markdown file (section)"
    )
    ap.add_argument("--section", default="e2e", help="section name in --benchmarks")
    args = ap.parse_args()
    if args.model is None or not args.model.exists():
        ap.error("no model: pass --model FILE.onnx")
    model = load_model(
        args.model, provider=args.provider, intra_op_threads=args.threads, warmup_batch=args.batch
    )
    mo = model_only(model, args.batch, min(args.seconds, 5.0))
    with tempfile.TemporaryDirectory(prefix="ecg-e2e-") as tmp:
        broker = Mosquitto(data_dir=Path(tmp) / "broker").start()
        metrics_port = free_port()
        config = Path(tmp) / "monitor.toml"
        config.write_text(
            f"""[mqtt]
port = {broker.port}
client_id = "bench-monitor"
[model]
path = "{args.model.resolve()}"
provider = "{args.provider}"
intra_op_threads = {args.threads}
[batch]
max_batch = {args.batch}
max_wait_ms = {args.max_wait_ms}
[metrics]
port = {metrics_port}
[service]
instance_id = "bench"
log_format = "json"
log_level = "warning"
"""
        )
        daemon_log = (Path(tmp) / "daemon.log").open("wb")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=daemon_log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            wait_for_port("127.0.0.1", metrics_port, 30)
            time.sleep(1.0)
            results = [
                run_format(f, args, broker, metrics_port, model) for f in args.formats.split(",")
            ]
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
            broker.stop()
            daemon_log.close()
            tail = (Path(tmp) / "daemon.log").read_text(errors="replace").strip()
            if tail:
                print("daemon log:", tail[-2000:], file=sys.stderr)
    lines = [
        f"`{' '.join(['bench/e2e.py', *sys.argv[1:]])}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: model {args.model.name} "
        f"({model.info.name} {model.info.version}), provider {model.info.provider}, "
        f"batch {args.batch}, {args.threads} ORT thread(s), frames of {args.frame} windows, "
        f"{args.devices} devices, {args.seconds:g} s per run; publisher, broker, daemon and "
        "alert subscriber on the same machine.",
        "",
        "| format | model-only windows/s | e2e windows/s (max) | e2e / model-only "
        "| half load windows/s | p50 ms | p99 ms | alerts timed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.fmt} | {mo:,.0f} | {r.max_windows_s:,.0f} | {r.max_windows_s / mo:.1%} "
            f"| {r.half_rate:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.alerts} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    if args.benchmarks:
        update_section(args.benchmarks, args.section, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
