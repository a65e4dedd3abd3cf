"""How many 360 Hz device streams (1 s chunks) one daemon process keeps up with in real time,
with p99 R-peak -> alert latency <= 2 s; side by side with the same daemon on windows.

Per load: a mosquitto, the daemon (`ecg-monitor run`, streams only), and the fleet
(`ecg-monitor simulate --mode stream --wall-clock`, a separate process) for --seconds. The
threshold is set below every score, so every beat on a good signal alerts, and each alert's
latency is `published_at - ts` (ts = device time of its R peak, on the wall clock here). A load
is sustained when the daemon decoded every chunk sent and the p99 latency is <= 2 s. Windows:
the same number of devices sending one window per heartbeat (1.2/s), latency from send time.

    python bench/streams.py --devices 100,200,400 --seconds 30 [--update BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sections import update_section  # noqa: E402
from monitor.frontend.segment import Segmentation  # noqa: E402
from monitor.frontend.stream import FrontEnd  # noqa: E402
from monitor.frontend.synthetic import synthetic_stream  # noqa: E402
from monitor.stream_wire import decode_stream, encode_stream_binary  # noqa: E402
from tests.brokers import Mosquitto, free_port  # noqa: E402
from tests.onnx_models import build_stream_model  # noqa: E402

FS = 360.0
WARMUP_S = 12.0  # quality learning and the first beats; latencies before this are not counted


class Latencies:
    """Subscribes to every alert; keeps published_at - ts of those after the warm-up."""

    def __init__(self, port: int) -> None:
        self.values: list[float] = []
        self.receipt: list[float] = []  # received_at - ts: R peak -> the chunk completing it
        self.after = float("inf")
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("ecg/+/alert", qos=0)
        self.client.loop_start()

    def _on(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        a = json.loads(msg.payload)
        if a["published_at"] >= self.after:
            with self._lock:
                self.values.append(a["published_at"] - a["ts"])
                self.receipt.append(a["received_at"] - a["ts"])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f"ecg_monitor_{name}"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_config(tmp: Path, port: int, model: Path, metrics_port: int, streams: bool) -> Path:
    cfg = tmp / f"bench-{streams}-{time.monotonic_ns()}.toml"
    cfg.write_text(
        f"""[mqtt]
port = {port}
client_id = "bench-{time.monotonic_ns()}"
session_expiry_s = 0
receive_maximum = 65535
[model]
path = "{model}"
provider = "cpu"
threshold = -1e9
[batch]
max_batch = 256
max_wait_ms = 20.0
[streams]
enabled = {str(streams).lower()}
windows = {str(not streams).lower()}
[limits]
queue_windows = 65536
[metrics]
port = {metrics_port}
[service]
instance_id = "bench-{streams}"
log_level = "warning"
log_format = "json"
"""
    )
    return cfg


def run_load(
    tmp: Path, broker: Mosquitto, model: Path, *, devices: int, seconds: float, streams: bool
) -> dict[str, float]:
    mport = free_port()
    cfg = daemon_config(tmp, broker.port, model, mport, streams)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = (tmp / f"daemon-{devices}-{streams}.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(cfg)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    lat = Latencies(broker.port)
    try:
        for _ in range(1200):  # start-up is slow on a loaded machine: up to 2 minutes
            try:
                metric(mport, "connected")
                break
            except OSError:
                if daemon.poll() is not None:
                    raise RuntimeError(f"daemon exited {daemon.returncode}") from None
                time.sleep(0.1)
        time.sleep(1.0)
        common = [
            "--broker",
            f"127.0.0.1:{broker.port}",
            "--devices",
            str(devices),
            "--duration",
            str(seconds),
            "--device-prefix",
            f"b{devices}-",
        ]
        if streams:
            sim = [
                "--mode",
                "stream",
                "--speed",
                "1",
                "--chunk-s",
                "1",
                "--record-s",
                "60",
                "--loop",
                "--artefacts",
                "0",
                "--lead-off",
                "0",
                "--wall-clock",
                "--anomaly-fraction",
                "0.05",
            ]
        else:
            sim = ["--rate", "1.2", "--format", "binary"]
        t0 = time.time()
        lat.after = t0 + WARMUP_S
        c0 = cpu_s(daemon.pid)
        fleet = subprocess.run(
            [sys.executable, "-m", "monitor", "simulate", *common, *sim],
            cwd=ROOT,
            env=env,
            capture_output=True,
            check=False,
            text=True,
            timeout=seconds + 600,
        )
        sent_line = fleet.stderr.strip().splitlines()[-1] if fleet.stderr.strip() else ""
        sent = (
            float(sent_line.split()[1].replace(",", "")) if sent_line.startswith("simulate:") else 0
        )
        time.sleep(3.0)  # what was sent last is scored and published
        elapsed = time.time() - t0
        cpu = cpu_s(daemon.pid) - c0
        received = metric(
            mport, "stream_chunks_received_total" if streams else "windows_received_total"
        )
        scored = metric(mport, "beats_scored_total" if streams else "windows_scored_total")
        with lat._lock:
            values = np.array(lat.values)
            receipt = np.array(lat.receipt)
        expected = sent or devices * seconds * (1.0 if streams else 1.2)
        return {
            "devices": devices,
            "received": received,
            "expected": expected,
            "scored": scored,
            "alerts": float(values.size),
            "p50": float(np.percentile(values, 50)) if values.size else float("nan"),
            "p99": float(np.percentile(values, 99)) if values.size else float("nan"),
            "max": float(values.max()) if values.size else float("nan"),
            "receipt_p50": float(np.percentile(receipt, 50)) if receipt.size else float("nan"),
            "receipt_p99": float(np.percentile(receipt, 99)) if receipt.size else float("nan"),
            "cpu": cpu / elapsed,
            "cpu_ms_per_msg": 1000 * cpu / max(received, 1),
            "sim": sent_line,  # type: ignore[dict-item]
        }
    finally:
        lat.close()
        daemon.terminate()
        daemon.wait(30)
        log.close()


def frontend_cost(devices: int = 200, seconds: int = 30) -> float:
    """CPU ms per stream-second of the front end alone (decode + FrontEnd.feed, in-process):
    the part of a stream that costs per device, whatever the load elsewhere."""
    seg = Segmentation(context=("pre_rr_s", "local_rr_s"))
    sig = [synthetic_stream(seconds, FS, seed=i).signal_mv for i in range(8)]
    fes = [FrontEnd(seg, FS) for _ in range(devices)]
    n = int(FS)
    t0 = time.process_time()
    for k in range(seconds):
        for d, fe in enumerate(fes):
            payload = encode_stream_binary(k * n, 0.0, FS, sig[d % 8][k * n : (k + 1) * n])
            c = decode_stream(payload, "d")
            fe.feed(c.start, c.samples_mv, c.fs)
    return 1000 * (time.process_time() - t0) / (devices * seconds)


def stream_model(tmp: Path) -> Path:
    bundled = ROOT / "models" / "stream-synthetic-dense.onnx"
    if bundled.is_file():
        return bundled
    return build_stream_model(
        tmp / "stream.onnx", Segmentation(context=("pre_rr_s", "local_rr_s")).to_json(), context=2
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", default="100,200,400", help="comma-separated loads")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--no-windows", action="store_true", help="skip the windows comparison")
    ap.add_argument("--update", type=Path, help="write the table into this BENCHMARKS.md")
    args = ap.parse_args()
    loads = [int(v) for v in args.devices.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Mosquitto(tmp / "broker").start()
        try:
            smodel = stream_model(tmp)
            wmodel = ROOT / "models" / "ecg-synthetic-dense.onnx"
            for n in loads:
                kinds = [True] if args.no_windows else [True, False]
                for streams in kinds:
                    model = smodel if streams else wmodel
                    r = run_load(
                        tmp, broker, model, devices=n, seconds=args.seconds, streams=streams
                    )
                    r["kind"] = "streams" if streams else "windows"  # type: ignore[assignment]
                    ok = r["received"] >= r["expected"] and r["p99"] <= 2.0
                    r["ok"] = ok  # type: ignore[assignment]
                    rows.append(r)
                    print(json.dumps(r), flush=True)
        finally:
            broker.stop()
    cost = frontend_cost()
    print(f"front end: {cost:.2f} ms CPU per stream-second", flush=True)
    load = os.getloadavg()
    lines = [
        f"`python bench/streams.py --devices {args.devices} --seconds {args.seconds:g}` on "
        f"{os.cpu_count()} CPUs shared with other jobs (load average {load[0]:.1f} at the end); "
        f"latency = alert published_at - device time of the R peak (streams) or of the send "
        f"(windows), after a {WARMUP_S:g} s warm-up.",
        "",
        "| input | devices | msgs sent | received | rows scored | daemon CPU | CPU ms/msg "
        "| R->receipt p50/p99 s | p50 s | p99 s | max s | sustained |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['devices']} | {r['expected']:,.0f} | "
            f"{r['received']:,.0f} | {r['scored']:,.0f} | {r['cpu']:.0%} | "
            f"{r['cpu_ms_per_msg']:.2f} | {r['receipt_p50']:.2f}/{r['receipt_p99']:.2f} | "
            f"{r['p50']:.2f} | "
            f"{r['p99']:.2f} | {r['max']:.2f} | {'yes' if r['ok'] else 'no'} |"
        )
    lines += [
        "",
        f"Front end alone (decode + `FrontEnd.feed`, 200 devices x 30 one-second chunks, "
        f"in-process CPU time): **{cost:.2f} ms per stream-second**, so one core's ceiling is "
        f"~{1000 / cost:,.0f} streams before batching, inference and MQTT.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.update:
        update_section(args.update, "bench-streams", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
