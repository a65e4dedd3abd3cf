"""The whole system on one machine: a broker, the daemon, a simulated fleet and live alerts.

Ends with a summary scored against the simulator's ground truth. stdout carries the alert view
only (a table on a terminal, JSON lines when piped); start-up lines, progress and the summary
go to stderr, so `ecg-monitor demo | jq` sees a clean stream. Every child process runs in its
own session and is stopped, and every temporary file removed, however the demo ends.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from monitor.beats import ECG5000_CLASSES, SYNTHETIC_CLASSES
from monitor.broker import (
    BrokerError,
    ClientOptions,
    EmbeddedBroker,
    add_client_options,
    connect,
    stop_process_group,
)
from monitor.consumer import Event, Subscriber, View
from monitor.errors import MonitorError
from monitor.simulate import BeatPool, Fleet, GroundTruthWriter, SentWindow

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = MODELS_DIR / "ecg-synthetic-dense.onnx"  # for the synthetic fleet
ECG5000_MODEL = MODELS_DIR / "ecg5000-vae.onnx"  # for ucr: replay of real ECG5000 beats


def default_model(source: str) -> Path:
    """The bundled model that matches the beats: the ECG5000 model for a `ucr:` replay, the
    synthetic one for the synthetic generator (each alerts on nearly every beat of the other)."""
    return ECG5000_MODEL if source.startswith("ucr") else DEFAULT_MODEL


def broker_description(demo: Demo, args: argparse.Namespace) -> str:
    """What the summary says of the broker: the program the demo started, or the one given."""
    if demo.broker:
        return f"{demo.broker.program}, started by the demo on port {demo.broker.port}"
    return f"{args.broker} (given with --broker)"


DAEMON_START_TIMEOUT = 60.0
DRAIN_TIMEOUT = 15.0
AMQTT_NOTE = (
    "note: the embedded broker is amqtt ({why}), which speaks MQTT 3.1.1 only "
    "and does not redeliver unacknowledged messages after a reconnect; the daemon runs in 3.1.1 "
    "mode. At-least-once delivery needs a production broker (mosquitto, EMQX, HiveMQ, VerneMQ)."
)

DAEMON_CONFIG = """\
[mqtt]
host = {host}
port = {port}
protocol = {protocol}
client_id = {client_id}
topic_prefix = {prefix}
qos = 1
session_expiry_s = 0

[model]
path = {model}

[alerts]
min_consecutive = 1
cooldown_s = 0.0
publish_scores = true

[service]
instance_id = {instance_id}
drain_timeout_s = 5.0
log_format = "json"
log_level = "info"
"""


class DemoError(MonitorError):
    """The demo could not start one of its parts."""


class InterruptedByUserError(Exception):
    """Ctrl-C (or SIGTERM/SIGHUP) arrived; the demo winds down."""


@dataclass
class Tally:
    """Ground truth, scores and alerts as they arrive, keyed by (device_id, seq)."""

    truth: dict[tuple[str, int], SentWindow] = field(default_factory=dict)
    scored: set[tuple[str, int]] = field(default_factory=set)
    alerted: set[tuple[str, int]] = field(default_factory=set)
    alert_latency: list[float] = field(default_factory=list)  # seconds, publish -> alert received
    first_score: float = math.inf
    last_score: float = 0.0
    alert_messages: int = 0

    def progress(self) -> str:
        """Windows sent, scored, and alerted among the scored (so alerted <= scored)."""
        scored = self.scored & self.truth.keys()
        alerted = self.alerted & scored
        return (
            f"... {len(self.truth):,} windows sent, {len(scored):,} scored, "
            f"{len(alerted):,} of them alerted"
        )

    def sent(self, rows: list[SentWindow]) -> None:
        for r in rows:
            self.truth[(r.device_id, r.seq)] = r

    def add(self, e: Event) -> None:
        seq = e.payload.get("seq")
        if not isinstance(seq, int):
            return
        key = (e.device_id, seq)
        if e.kind == "score":  # one report per message: windows seq, seq+1, ... (count)
            count = e.payload.get("count", 1)
            self.scored.update(
                (e.device_id, seq + i) for i in range(count if isinstance(count, int) else 1)
            )
            self.first_score = min(self.first_score, e.received_at)
            self.last_score = max(self.last_score, e.received_at)
        elif e.kind == "alert":
            self.alert_messages += 1
            if key not in self.alerted:
                self.alerted.add(key)
                sent = self.truth.get(key)
                if sent is not None:
                    self.alert_latency.append(e.received_at - sent.sent_at)


@dataclass(frozen=True)
class Summary:
    broker: str
    model: str
    duration_s: float
    devices: int
    windows_sent: int
    anomalous_sent: int
    windows_scored: int
    alerts: int
    true_positives: int
    false_positives: int
    false_negatives: int
    precision: float
    recall: float
    throughput_wps: float
    latency_p50_ms: float
    latency_p99_ms: float
    interrupted: bool

    @classmethod
    def of(
        cls, t: Tally, *, broker: str, model: str, duration: float, devices: int, interrupted: bool
    ) -> Summary:
        anomalous = {k for k, w in t.truth.items() if w.is_anomaly}
        alerted = t.alerted & t.truth.keys()
        tp = len(alerted & anomalous)
        fp = len(alerted - anomalous)
        # A window that never got scored (interrupted before the daemon saw it) is not a miss.
        considered = anomalous & t.scored if t.scored else anomalous
        fn = len(considered - alerted)
        lat = sorted(t.alert_latency)
        span = t.last_score - t.first_score
        return cls(
            broker=broker,
            model=model,
            duration_s=round(duration, 2),
            devices=devices,
            windows_sent=len(t.truth),
            anomalous_sent=len(anomalous),
            windows_scored=len(t.scored & t.truth.keys()),
            alerts=len(alerted),
            true_positives=tp,
            false_positives=fp,
            false_negatives=fn,
            precision=tp / (tp + fp) if tp + fp else math.nan,
            recall=tp / (tp + fn) if tp + fn else math.nan,
            throughput_wps=len(t.scored) / span if span > 0 else math.nan,
            latency_p50_ms=_quantile(lat, 0.50) * 1000,
            latency_p99_ms=_quantile(lat, 0.99) * 1000,
            interrupted=interrupted,
        )

    def render(self) -> str:
        def num(v: float, fmt: str) -> str:
            return "n/a" if math.isnan(v) else format(v, fmt)

        title = "ecg-monitor demo summary" + (" (interrupted)" if self.interrupted else "")
        rows = [
            ("broker", self.broker),
            ("model", self.model),
            ("ran for", f"{self.duration_s:.1f} s, {self.devices} devices"),
            ("windows sent", f"{self.windows_sent:,} ({self.anomalous_sent:,} anomalous)"),
            ("windows scored", f"{self.windows_scored:,}"),
            (
                "alerts",
                f"{self.alerts:,} (true {self.true_positives:,}, false {self.false_positives:,}, "
                f"missed {self.false_negatives:,})",
            ),
            ("precision", num(self.precision, ".3f")),
            ("recall", num(self.recall, ".3f")),
            ("throughput", f"{num(self.throughput_wps, ',.0f')} windows/s scored"),
            (
                "latency",
                f"p50 {num(self.latency_p50_ms, '.1f')} ms, "
                f"p99 {num(self.latency_p99_ms, '.1f')} ms (publish -> alert received)",
            ),
        ]
        return "\n".join([title, *(f"  {k:<15} {v}" for k, v in rows)])


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


@contextmanager
def _signals_set(flag: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP set `flag` instead of raising, so clean-up always runs to the end."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        flag.set()

    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    previous = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _toml(value: str | int) -> str:
    return json.dumps(value)  # a JSON string or integer is a valid TOML one


def _log_tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Demo:
    """Owns every part it starts; `close()` stops them all, whatever state start-up reached."""

    config_extra = ""  # more daemon config (TOML tables), e.g. the stream demo's [streams]

    def __init__(self, args: argparse.Namespace, interrupted: threading.Event) -> None:
        self.args = args
        self.interrupted = interrupted
        self.tmp = Path(tempfile.mkdtemp(prefix="ecg-demo-"))
        self.broker: EmbeddedBroker | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.view: subprocess.Popen[str] | None = None
        self.sub: Subscriber | None = None
        self.fleet: Fleet | None = None
        self.fleet_client: Any = None
        self.fleet_thread: threading.Thread | None = None
        self.truth_file: GroundTruthWriter | None = None
        self.tally = Tally()
        self.instance_id = f"demo-{os.getpid()}"
        self.daemon_log = self.tmp / "daemon.log"
        self.daemon_started = 0.0

    def check(self) -> None:
        if self.interrupted.is_set():
            raise InterruptedByUserError

    def say(self, text: str) -> None:
        """A line for the person watching: stderr, so stdout stays the alert stream."""
        print(text, file=sys.stderr, flush=True)

    def daemon_died(self) -> DemoError:
        assert self.daemon is not None
        return DemoError(
            f"the daemon exited with {self.daemon.returncode}:\n{_log_tail(self.daemon_log)}"
        )

    # ------------------------------------------------------------------ start-up

    def start_broker(self) -> ClientOptions:
        if self.args.broker is not None:
            opts = ClientOptions.from_args(self.args)
            self.say(f"broker      {opts.broker} (given, MQTT {opts.mqtt_version})")
            return opts
        self.broker = EmbeddedBroker(prefer=self.args.embedded_broker)
        self.broker.start()
        self.say(
            f"broker      {self.broker.program} on {self.broker.address} "
            f"(MQTT {self.broker.mqtt_version}), started for this demo"
        )
        if self.broker.kind == "amqtt":
            why = "as asked" if self.args.embedded_broker == "amqtt" else "no mosquitto on PATH"
            self.say(AMQTT_NOTE.format(why=why))
        return ClientOptions(self.broker.address, mqtt_version=self.broker.mqtt_version)

    def start_daemon(self, opts: ClientOptions, model: Path) -> None:
        if opts.username or opts.tls or opts.ca_file:
            raise DemoError(
                "the demo's daemon connects without credentials or TLS; run it yourself"
            )
        config = self.tmp / "monitor.toml"
        config.write_text(
            DAEMON_CONFIG.format(
                host=_toml(opts.broker.host),
                port=opts.broker.port,
                protocol=5 if opts.mqtt_version == "5" else 311,
                client_id=_toml(f"ecg-monitor-{self.instance_id}"),
                prefix=_toml(self.args.prefix),
                model=_toml(str(model)),
                instance_id=_toml(self.instance_id),
            )
            + self.config_extra
        )
        self.daemon_started = time.monotonic()
        with self.daemon_log.open("wb") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.say(
            f"daemon      pid {self.daemon.pid}, model {model}: loading the model, "
            "then subscribing (a few seconds)"
        )

    def wait_online(self, opts: ClientOptions) -> None:
        """Subscribe to alerts and scores, then wait for the daemon's retained status: online."""
        online = threading.Event()
        topic = f"ecg-monitor/{self.instance_id}/status"

        def on_status(_c: Any, _u: Any, msg: Any) -> None:
            try:
                if json.loads(msg.payload).get("state") == "online":
                    online.set()
            except (ValueError, AttributeError):
                pass

        self.sub = Subscriber(opts, prefix=self.args.prefix, kinds=("alert", "score"))
        self.sub.client.message_callback_add(topic, on_status)
        self.sub.client.subscribe(topic, 1)
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        while not online.wait(0.1):
            self.check()
            assert self.daemon is not None
            if self.daemon.poll() is not None:
                raise self.daemon_died()
            if time.monotonic() > deadline:
                raise DemoError(f"the daemon was not online after {DAEMON_START_TIMEOUT:.0f} s")
        self.say(f"daemon      online after {time.monotonic() - self.daemon_started:.1f} s")

    def start_view(self, opts: ClientOptions) -> None:
        """The central-station page (`ecg-monitor view`) on the demo's broker; its URL is printed.
        Skipped with --no-view; a view that cannot start (no aiohttp, port taken) is a note."""
        if not self.args.view:
            return
        a = self.args
        cmd = [sys.executable, "-m", "monitor", "view", "--broker", str(opts.broker)]
        cmd += [
            "--mqtt-version",
            opts.mqtt_version,
            "--prefix",
            a.prefix,
            "--listen",
            a.view_listen,
        ]
        if opts.username is not None:
            cmd += ["--username", opts.username]
        if opts.password_file is not None:
            cmd += ["--password-file", str(opts.password_file)]
        if opts.tls:
            cmd.append("--tls")
        if opts.ca_file is not None:
            cmd += ["--ca-file", str(opts.ca_file)]
        log_path = self.tmp / "view.log"
        with log_path.open("wb") as log:
            self.view = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                text=True,
            )
        assert self.view.stdout is not None
        line = self.view.stdout.readline()  # "view: URL ..." once it listens, "" if it exited
        url = line.split()[1] if line.startswith("view: http") else None
        if url is None:
            self.say(f"view        not started: {_log_tail(log_path, 3) or line.strip()}")
        else:
            self.say(f"view        {url} (the central-station page; --no-view skips it)")

    def start_fleet(self, opts: ClientOptions) -> None:
        a = self.args
        pool = BeatPool.from_source(a.source, seed=a.seed)
        if a.ground_truth is not None:
            self.truth_file = GroundTruthWriter(a.ground_truth)
        truth_file = self.truth_file

        def on_sent(rows: list[SentWindow]) -> None:
            self.tally.sent(rows)
            if truth_file is not None:
                truth_file.write(rows)

        self.fleet = Fleet(
            pool,
            devices=a.devices,
            rate=a.rate,
            anomaly_fraction=a.anomaly_fraction,
            prefix=a.prefix,
            seed=a.seed,
            on_sent=on_sent,
        )
        fleet = self.fleet
        self.run_fleet(
            opts, f"ecg-demo-fleet-{os.getpid()}", lambda c: fleet.run(c, duration=a.duration)
        )
        self.say(
            f"fleet       {a.devices} devices x {a.rate:g} windows/s, "
            f"{a.anomaly_fraction:.0%} anomalous, for {a.duration:g} s (Ctrl-C stops)"
        )

    def run_fleet(self, opts: ClientOptions, client_id: str, run: Callable[[Any], object]) -> None:
        """Connect the fleet's own client and call `run(client)` in the "fleet" thread (what
        `watch` waits on and `close` joins); each demo's `start_fleet` builds its fleet first."""
        self.fleet_client = connect(opts, client_id)
        client = self.fleet_client
        self.fleet_thread = threading.Thread(target=lambda: run(client), name="fleet", daemon=True)
        self.fleet_thread.start()

    # ------------------------------------------------------------------ running

    def watch(self) -> None:
        """Show alerts until the fleet is done, then wait until every window is scored."""
        assert self.sub is not None and self.fleet is not None and self.fleet_thread is not None
        view = (
            View(sys.stdout, "table" if sys.stdout.isatty() else "json") if self.args.live else None
        )
        next_status = time.monotonic() + 5.0
        drain_deadline: float | None = None
        while True:
            self.check()
            if self.daemon is not None and self.daemon.poll() is not None:
                raise self.daemon_died()
            event = self.sub.get(0.2)
            if event is not None:
                self.tally.add(event)
                if view is not None and event.kind == "alert":
                    view.show(event, note=self.truth_note(event))
            now = time.monotonic()
            if now >= next_status:
                next_status = now + 5.0
                self.say(self.tally.progress())
            if self.fleet_thread.is_alive():
                continue
            if drain_deadline is None:
                drain_deadline = now + DRAIN_TIMEOUT
            if event is None and self.tally.truth.keys() <= self.tally.scored:
                return
            if now > drain_deadline:
                return

    def truth_note(self, e: Event) -> str:
        """What the simulator really sent for an alerted window (the live view's last column)."""
        seq = e.payload.get("seq")
        sent = self.tally.truth.get((e.device_id, seq)) if isinstance(seq, int) else None
        if sent is None:
            return ""
        names = ECG5000_CLASSES if self.args.source.startswith("ucr") else SYNTHETIC_CLASSES
        name = names.get(sent.label, f"class {sent.label}")
        return name if sent.is_anomaly else f"{name} (false alarm)"

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Stop everything started, newest first; never raises."""
        if self.fleet is not None:
            self.fleet.stop()
        if self.fleet_thread is not None:
            self.fleet_thread.join(timeout=5.0)
        for client in (self.fleet_client, self.sub.client if self.sub else None):
            if client is not None:
                try:
                    client.disconnect()
                    client.loop_stop()
                except Exception:  # clean-up goes on whatever a client did
                    pass
        if self.view is not None:
            stop_process_group(self.view, grace=5.0)
        if self.daemon is not None:
            stop_process_group(self.daemon, grace=10.0)
        if self.broker is not None:
            self.broker.stop()
        if self.truth_file is not None:
            self.truth_file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


DemoT = TypeVar("DemoT", bound=Demo)


def run_demo(
    make: Callable[[argparse.Namespace, threading.Event], DemoT],
    args: argparse.Namespace,
    model: Path,
) -> tuple[DemoT, int, float]:
    """Start a demo's parts in order, watch it, and close it whatever happens.

    Shared by the window and the stream demo. Returns the demo, the exit code (0; 1 on an
    error, already printed; 130 when interrupted) and the seconds the fleet ran.
    """
    interrupted = threading.Event()
    started = time.monotonic()
    code = 0
    with _signals_set(interrupted):
        demo = make(args, interrupted)
        try:
            opts = demo.start_broker()
            demo.check()
            demo.start_daemon(opts, model)
            demo.check()
            demo.wait_online(opts)
            demo.start_view(opts)
            demo.check()
            demo.start_fleet(opts)
            started = time.monotonic()
            demo.watch()
        except InterruptedByUserError:
            code = 130
        except (MonitorError, BrokerError, OSError) as e:
            print(f"ecg-monitor demo: {e}", file=sys.stderr)
            code = 1
        finally:
            ran = time.monotonic() - started
            demo.close()
    return demo, code, ran


def configure(parser: argparse.ArgumentParser) -> None:
    add_client_options(
        parser, default=None, broker_help="use this MQTT broker (default: start one here)"
    )
    parser.add_argument(
        "--mode",
        choices=["window", "stream"],
        default="window",
        help="window: devices send cut heartbeat windows; stream: continuous ECG, the daemon "
        "finds and scores the beats (monitor/stream_demo.py)",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="stream mode: times real time")
    parser.add_argument(
        "--records", help="stream mode with --source mitdb:DIR: records, comma separated"
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of traffic")
    parser.add_argument("--devices", type=int, default=10, help="simulated devices")
    parser.add_argument("--rate", type=float, default=5.0, help="windows/s per device")
    parser.add_argument(
        "--anomaly-fraction",
        type=float,
        default=0.2,
        help="share of anomalous windows",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"ONNX model the daemon loads (default {DEFAULT_MODEL.name} for synthetic beats, "
        f"{ECG5000_MODEL.name} for --source ucr:PATH; with --mode stream "
        "stream-synthetic-dense.onnx, or mitdb-ds1-dense.onnx for --source mitdb:DIR)",
    )
    parser.add_argument(
        "--source",
        default="synthetic",
        help="beats the fleet sends: synthetic[:N] or ucr:PATH (a UCR file with labels)",
    )
    parser.add_argument("--seed", type=int, default=2026, help="simulator seed")
    parser.add_argument("--prefix", default="ecg", help="topic prefix")
    parser.add_argument(
        "--embedded-broker",
        choices=["auto", "mosquitto", "amqtt"],
        default="auto",
        help="broker to start when --broker is not given: auto = mosquitto from PATH when "
        "present, else amqtt (pure Python, MQTT 3.1.1, no redelivery)",
    )
    parser.add_argument(
        "--no-live",
        dest="live",
        action="store_false",
        help="do not print each alert (the summary only)",
    )
    parser.add_argument(
        "--ground-truth",
        type=Path,
        metavar="FILE",
        help="also write what the fleet sent (CSV: device_id,seq,label,is_anomaly,sent_at)",
    )
    parser.add_argument(
        "--summary-json", type=Path, metavar="FILE", help="also write the summary as JSON"
    )
    parser.add_argument(
        "--no-view",
        dest="view",
        action="store_false",
        help="do not start the central-station page (ecg-monitor view, needs aiohttp)",
    )
    parser.add_argument(
        "--view-listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="where the view serves its page",
    )


def main(args: argparse.Namespace) -> int:
    if args.model is None:
        args.model = default_model(args.source)
    if args.mode == "stream":
        return int(importlib.import_module("monitor.stream_demo").main(args))
    model = args.model.resolve()
    if not model.is_file():
        hint = " (build it with `make models`)" if args.model.parent == MODELS_DIR else ""
        print(f"ecg-monitor demo: no model at {model}{hint}", file=sys.stderr)
        return 2
    demo, code, ran = run_demo(Demo, args, model)
    if demo.fleet is None:
        return code
    broker = broker_description(demo, args)
    summary = Summary.of(
        demo.tally,
        broker=broker,
        model=model.name,
        duration=ran,
        devices=args.devices,
        interrupted=code == 130,
    )
    print(summary.render(), file=sys.stderr, flush=True)
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return code
