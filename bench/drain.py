"""Drain rate of a pre-filled persistent session: the daemon against a bare paho subscriber.

    python bench/drain.py                                   # three loads, 3 repeats
    python bench/drain.py --repeats 5 --benchmarks BENCHMARKS.md
    python bench/drain.py --loads storm --instances 2       # 2 daemons on $share

Method (issue 14): one mosquitto of its own (unlimited `max_queued_messages`, in-flight 1000).
For each consumer a persistent MQTT 5 QoS 1 session (clean_start false, session expiry) is
registered and left; a publisher fills it with N messages while the consumer is away, then one
end marker; then the consumer connects and drains. Nothing else runs in the benchmark during
the drain, so the rate is the consumer's alone. msg/s = N / (last message done - CONNACK).

* bare: a paho client in a child process, `manual_ack=True`, Receive Maximum as the daemon's,
  that acks each message on receipt and does nothing else (the Python transport's own limit);
  done = the end marker received.
* daemon: `ecg-monitor run` with the bundled dense model (CPU, 1 ORT thread), CONNACK from
  its `mqtt_connected` log event; done = the end marker's alert received by an observer
  subscribed to that one topic (alerts go out in batch order, so every earlier window was
  scored and its alert published); the run then checks the daemon's /metrics counted every
  window and alert. With --instances K: K daemons on one `$share/drain/ecg/+/window`
  subscription, each with its own persistent session; done = every instance's end marker
  (one per instance) alerted.

Loads: `single` (1 window per binary frame, 1/16 anomalous), `frames` (16-window frames, 1/16
anomalous), `storm` (16-window frames, every window anomalous), `json1` (1 window per JSON
message, 1/16 anomalous). Bare and daemon alternate which goes first from one repeat to the
next; the table gives medians. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sections import update_section  # noqa: E402
from monitor.engine import load_model  # noqa: E402
from monitor.wire import HEADER, MAGIC, VERSION  # noqa: E402
from tests.brokers import Mosquitto, free_port  # noqa: E402

MODEL = ROOT / "models" / "ecg-synthetic-dense.onnx"
DAEMON_TREE = [ROOT]  # --daemon-tree: run `python -m monitor` from another checkout (A/B)
RECEIVE_MAXIMUM = 1000
DEVICES = 8
END_DEVICE = "zzend"


@dataclass(frozen=True)
class Load:
    name: str
    title: str
    frame: int  # windows per message
    anomalous_every: int  # 1 = every window, 16 = one in 16
    fmt: str  # binary | json
    messages: int  # default N


LOADS = {
    "single": Load(
        "single", "1 window per message (binary), 1/16 anomalous", 1, 16, "binary", 24000
    ),
    "frames": Load("frames", "16-window binary frames, 1/16 anomalous", 16, 16, "binary", 12000),
    "storm": Load(
        "storm", "16-window frames, every window anomalous (alert storm)", 16, 1, "binary", 6000
    ),
    "json1": Load("json1", "1 window per message (JSON), 1/16 anomalous", 1, 16, "json", 16000),
}


# ------------------------------------------------------------------------------- payloads


def pools(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows the bundled model scores below its threshold, and windows far above it."""
    sys.path.insert(0, str(ROOT / "bench"))
    from e2e import pools as e2e_pools  # noqa: PLC0415

    return e2e_pools(load_model(str(MODEL), provider="cpu", intra_op_threads=1), length)


def payloads(
    load: Load, n: int, normal: np.ndarray, anomalous: np.ndarray
) -> list[tuple[str, bytes]]:
    """n messages over DEVICES devices (seq increasing per device), pre-encoded."""
    out: list[tuple[str, bytes]] = []
    seqs = [0] * DEVICES
    w = 0  # global window counter, for the anomalous share
    for i in range(n):
        dev = i % DEVICES
        rows = []
        for _ in range(load.frame):
            pool = anomalous if w % load.anomalous_every == 0 else normal
            rows.append(pool[w % len(pool)])
            w += 1
        out.append((f"ecg/dev{dev}/window", encode(load, seqs[dev], np.stack(rows))))
        seqs[dev] += load.frame
    return out


def encode(load: Load, seq: int, rows: np.ndarray) -> bytes:
    if load.fmt == "json":
        if len(rows) == 1:
            return json.dumps({"seq": seq, "ts": float(seq), "samples": rows[0].tolist()}).encode()
        return json.dumps({"seq": seq, "ts": float(seq), "windows": rows.tolist()}).encode()
    head = HEADER.pack(MAGIC, VERSION, len(rows), rows.shape[1], seq, float(seq), 0.0)
    return head + rows.astype("<f4").tobytes()


def expected_alerts(load: Load, n: int) -> int:
    windows = n * load.frame
    return -(-windows // load.anomalous_every)


# ------------------------------------------------------------------------------- sessions


def _connect_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    return props


def register_session(port: int, client_id: str, topic: str) -> None:
    """Create a persistent session subscribed to `topic` at QoS 1 and leave it."""
    done = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
    c.on_subscribe = lambda *a: done.set()
    c.connect("127.0.0.1", port, clean_start=False, properties=_connect_props())
    c.loop_start()
    if not done.wait(10):
        raise SystemExit(f"could not register session {client_id}")
    c.disconnect()
    c.loop_stop()


def fill(port: int, messages: list[tuple[str, bytes]]) -> float:
    """Publish every message at QoS 1 and wait for the PUBACKs; seconds taken."""
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    infos = [c.publish(t, p, qos=1) for t, p in messages]
    for info in infos:
        info.wait_for_publish(120)
    took = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return took


# ------------------------------------------------------------------------------- consumers


def bare_child(port: int, client_id: str, total: int) -> None:
    """Child process: drain `total` messages (end marker last), print timings as JSON."""
    state = {"n": 0, "t0": 0.0, "t1": 0.0}
    c = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, manual_ack=True
    )

    def on_connect(cl: paho.Client, *a: object) -> None:
        state["t0"] = time.time()
        state["cpu0"] = time.process_time()

    def on_message(cl: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        cl.ack(msg.mid, msg.qos)
        state["n"] += 1
        if state["n"] == total:
            state["t1"] = time.time()
            state["cpu1"] = time.process_time()
            cl.disconnect()

    c.on_connect = on_connect
    c.on_message = on_message
    c.connect("127.0.0.1", port, clean_start=False, properties=_connect_props())
    c.loop_forever()
    print(json.dumps(state))


@dataclass(frozen=True)
class Run:
    """One drain: messages/s, and CPU µs per message of the consumer and of the broker."""

    rate: float
    cpu_us: float
    broker_us: float


def cpu_s(pid: int) -> float:
    """utime + stime of a process (and its reaped children), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_bare(port: int, messages: list[tuple[str, bytes]], broker_pid: int) -> Run:
    cid = f"bare-{uuid.uuid4().hex[:8]}"
    register_session(port, cid, "ecg/+/window")
    fill(port, [*messages, end_marker(messages)])
    b0 = cpu_s(broker_pid)
    out = subprocess.run(
        [sys.executable, __file__, "--bare-child", str(port), cid, str(len(messages) + 1)],
        capture_output=True,
        check=True,
        timeout=600,
    )
    b1 = cpu_s(broker_pid)
    state = json.loads(out.stdout)
    n = len(messages)
    return Run(
        n / (state["t1"] - state["t0"]),
        (state["cpu1"] - state["cpu0"]) / n * 1e6,
        (b1 - b0) / n * 1e6,
    )


_END: dict[str, bytes] = {}


def end_marker(messages: list[tuple[str, bytes]], device: str = END_DEVICE) -> tuple[str, bytes]:
    return (f"ecg/{device}/window", _END["payload"])


def _iso(ts: str) -> float:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ecg_monitor_") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


def run_daemon(
    port: int,
    load: Load,
    messages: list[tuple[str, bytes]],
    tmp: Path,
    *,
    instances: int = 1,
    extra_toml: str = "",
    profile: Path | None = None,
    broker_pid: int = 0,
) -> Run:
    """Drain with `instances` daemons; msg/s over the whole drain."""
    group = f"drain{uuid.uuid4().hex[:4]}" if instances > 1 else ""
    topic = f"$share/{group}/ecg/+/window" if group else "ecg/+/window"
    ends = [f"{END_DEVICE}{k}" for k in range(instances)]
    cids = [f"mon-{uuid.uuid4().hex[:8]}" for _ in range(instances)]
    mports = [free_port() for _ in range(instances)]
    for cid in cids:
        register_session(port, cid, topic)
    # one end marker per instance at the end: round-robin hands each instance one
    fill(port, [*messages, *(end_marker(messages, e) for e in ends)])
    seen: dict[str, float] = {}
    lock = threading.Lock()
    watcher = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    subscribed = threading.Event()

    def on_alert(cl: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with lock:
            seen.setdefault(msg.topic.split("/")[1], time.time())

    watcher.on_message = on_alert
    watcher.on_subscribe = lambda *a: subscribed.set()
    watcher.on_connect = lambda cl, *a: cl.subscribe([(f"ecg/{e}/alert", 1) for e in ends])
    watcher.connect("127.0.0.1", port)
    watcher.loop_start()
    subscribed.wait(10)
    procs, logs = [], []
    for k in range(instances):
        config = tmp / f"monitor-{k}.toml"
        config.write_text(
            f"""
[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "{cids[k]}"
share_group = "{group}"
receive_maximum = {RECEIVE_MAXIMUM}
[model]
path = "{MODEL}"
provider = "cpu"
intra_op_threads = 1
[metrics]
port = {mports[k]}
[service]
instance_id = "drain-{k}"
log_format = "json"
{extra_toml}
"""
        )
        log = (tmp / f"daemon-{k}-{time.monotonic_ns()}.log").open("w+b")
        logs.append(log)
        prof = ["-m", "cProfile", "-o", str(profile) + f".{k}"] if profile else []
        procs.append(
            subprocess.Popen(
                [sys.executable, *prof, "-m", "monitor", "run", "--config", str(config)],
                cwd=DAEMON_TREE[0],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(DAEMON_TREE[0])},
            )
        )
    deadline = time.monotonic() + 600
    cpu0: list[float] = []
    try:
        while time.monotonic() < deadline:
            with lock:
                if len(seen) == instances:
                    break
            if not cpu0 and all(b'"mqtt_connected"' in Path(lg.name).read_bytes() for lg in logs):
                cpu0 = [cpu_s(p.pid) for p in procs] + [cpu_s(broker_pid)]
            for p, log in zip(procs, logs, strict=True):
                if p.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"daemon exited: {log.read().decode()[-3000:]}")
            time.sleep(0.01)
        else:
            raise SystemExit("drain did not finish in 600 s")
        t1 = max(seen.values())
        cpu1 = [cpu_s(p.pid) for p in procs] + [cpu_s(broker_pid)]
        connected = []
        for log in logs:
            log.seek(0)
            for line in log.read().decode().splitlines():
                if '"mqtt_connected"' in line:
                    connected.append(_iso(json.loads(line)["timestamp"]))
                    break
        t0 = min(connected)
        want_windows = len(messages) * load.frame + instances
        want_alerts = expected_alerts(load, len(messages)) + instances
        totals = {"w": 0.0, "a": 0.0}
        for _ in range(100):  # acks and counters settle a moment after the last alert
            m = [scrape(mp) for mp in mports]
            totals = {
                "w": sum(x.get("ecg_monitor_windows_scored_total", 0) for x in m),
                "a": sum(x.get("ecg_monitor_alerts_total", 0) for x in m),
            }
            if totals == {"w": want_windows, "a": want_alerts}:
                break
            time.sleep(0.05)
        if totals != {"w": want_windows, "a": want_alerts}:
            raise SystemExit(f"daemon counted {totals}, expected {want_windows} / {want_alerts}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()
        watcher.disconnect()
        watcher.loop_stop()
    n = len(messages)
    if not cpu0:  # drained before the first poll saw it connect
        cpu0 = [math.nan] * len(cpu1)
    return Run(
        n / (t1 - t0),
        sum(b - a for a, b in zip(cpu0[:-1], cpu1[:-1], strict=True)) / n * 1e6,
        (cpu1[-1] - cpu0[-1]) / n * 1e6,
    )


# ------------------------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-child":
        bare_child(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--loads", default="single,frames,storm", help=f"of {','.join(LOADS)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every load's N")
    ap.add_argument("--instances", type=int, default=1, help="daemons on one $share group")
    ap.add_argument("--no-bare", action="store_true", help="daemon only (bare rates not measured)")
    ap.add_argument("--benchmarks", type=Path, help="write the table into this BENCHMARKS.md")
    ap.add_argument("--section", default="drain")
    ap.add_argument("--profile", type=Path, help="run the daemon under cProfile, stats to PATH.K")
    ap.add_argument(
        "--daemon-tree", type=Path, help="checkout whose monitor/ the daemon runs (default: this)"
    )
    ap.add_argument(
        "--toml",
        default="",
        help="TOML appended to each daemon's config, e.g. $'[batch]\\nmax_batch = 512'",
    )
    ap.add_argument("--note", default="", help="a line about load conditions for the record")
    args = ap.parse_args()
    loads = [LOADS[n] for n in args.loads.split(",")]
    if args.daemon_tree:
        DAEMON_TREE[0] = args.daemon_tree.resolve()
    normal, anomalous = pools(140)
    _END["payload"] = encode(LOADS["single"], 0, anomalous[:1])
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ecg-drain-") as tmpdir:
        tmp = Path(tmpdir)
        broker = Mosquitto(data_dir=tmp / "broker").start()
        try:
            for load in loads:
                n = max(100, int(load.messages * args.scale))
                messages = payloads(load, n, normal, anomalous)
                bare: list[Run] = []
                daemon: list[Run] = []
                for r in range(args.repeats):
                    order = ("bare", "daemon") if r % 2 == 0 else ("daemon", "bare")
                    for who in order:
                        if who == "bare" and not args.no_bare:
                            bare.append(run_bare(broker.port, messages, broker.proc.pid))
                        elif who == "daemon":
                            daemon.append(
                                run_daemon(
                                    broker.port,
                                    load,
                                    messages,
                                    tmp,
                                    instances=args.instances,
                                    extra_toml=args.toml,
                                    profile=args.profile,
                                    broker_pid=broker.proc.pid,
                                )
                            )
                    print(
                        f"{load.name} repeat {r}: bare {bare[-1] if bare else '-'}"
                        f" daemon {daemon[-1]}",
                        file=sys.stderr,
                        flush=True,
                    )
                rows.append((load, n, bare, daemon))
        finally:
            broker.stop()
    load_after = os.getloadavg()
    table = render(rows, args, load_before, load_after)
    print(table)
    if args.benchmarks:
        update_section(args.benchmarks, args.section, table)
    return 0


def render(
    rows: list[tuple[Load, int, list[Run], list[Run]]],
    args: argparse.Namespace,
    before: tuple[float, float, float],
    after: tuple[float, float, float],
) -> str:
    cmd = "python bench/drain.py " + " ".join(sys.argv[1:])
    inst = f"{args.instances} daemons on one $share group" if args.instances > 1 else "1 daemon"
    head = (
        f"`{cmd}` on {platform.node()} ({os.cpu_count()} CPUs), "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; load average {before[0]:.1f} before, "
        f"{after[0]:.1f} after. {inst}, bundled dense model on CPU (1 ORT thread), "
        f"Receive Maximum {RECEIVE_MAXIMUM}, mosquitto 2.0 with unlimited queues; medians of "
        f"{args.repeats} repeats (range in brackets). CPU columns: µs of CPU per message "
        "during the drain, of the consumer process(es) and of mosquitto, from /proc (they do "
        f"not depend on what else runs).{' ' + args.note if args.note else ''}\n"
    )
    lines = [
        head,
        "| load | N msgs | bare msg/s | daemon msg/s | daemon windows/s | daemon / bare "
        "| CPU µs/msg bare / daemon | broker µs/msg bare / daemon |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    med = statistics.median
    for load, n, bare, daemon in rows:
        d = med(r.rate for r in daemon)
        rng_d = f" [{min(r.rate for r in daemon):,.0f}–{max(r.rate for r in daemon):,.0f}]"
        d_cpu = med(r.cpu_us for r in daemon)
        d_brk = med(r.broker_us for r in daemon)
        if bare:
            b = med(r.rate for r in bare)
            rng_b = f" [{min(r.rate for r in bare):,.0f}–{max(r.rate for r in bare):,.0f}]"
            ratio = f"**{d / b:.2f}**"
            cpu = f"{med(r.cpu_us for r in bare):.0f} / {d_cpu:.0f}"
            brk = f"{med(r.broker_us for r in bare):.0f} / {d_brk:.0f}"
            bare_s = f"{b:,.0f}{rng_b}"
        else:
            ratio, cpu, brk, bare_s = "–", f"– / {d_cpu:.0f}", f"– / {d_brk:.0f}", "–"
        lines.append(
            f"| {load.title} | {n:,} | {bare_s} | {d:,.0f}{rng_d} | {d * load.frame:,.0f} | "
            f"{ratio} | {cpu} | {brk} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
