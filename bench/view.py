"""CPU cost of the central-station view with a large streaming fleet: browser and server.

    .venv/bin/python bench/view.py                       # 200 devices, 30 s, writes BENCHMARKS.md
    .venv/bin/python bench/view.py --devices 50 --seconds 10 --no-write

A mosquitto of its own, `ecg-monitor view` as a child process, a simulated fleet
(tests/view/fleet.py: --devices streams at --fs Hz, one ECGS chunk every --chunk-s each, QoS 0;
one run per chunk size given)
and Debian's chromium (headless, driven by playwright) showing the grid at 1600x900. Stream
alerts are published at one per second on random devices. After a warm-up, CPU time
(user + system, from /proc) is read over --seconds: of the view server process, of the
chromium renderer processes and of all chromium processes (browser, GPU/compositor, utility,
renderers). Also reported: frames the page drew per second and alert -> page latency (from
the alert's published_at to the row appearing, same clock). Goals (issue 13): browser < 50 %
of one core, server < 20 %. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sections import update_section  # noqa: E402
from tests.brokers import Mosquitto  # noqa: E402
from tests.view.fleet import StreamFleet  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Result:
    devices: int
    fs: float
    chunk_s: float
    seconds: float
    server_pct: float
    renderer_pct: float
    browser_pct: float
    fps: float
    visible: int
    alerts: int
    latency_p50_ms: float
    latency_max_ms: float
    messages_per_s: float
    load: str


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def chromium_procs() -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(renderers, all chromium processes) started under this process."""
    everything, renderers = [], []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.NoSuchProcess:
            continue
        if not cmd or "chrom" not in Path(cmd[0]).name:
            continue
        everything.append(p)
        if "--type=renderer" in cmd:
            renderers.append(p)
    return renderers, everything


def run(args: argparse.Namespace) -> Result:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 (dev extra)

    tmp = Path(tempfile.mkdtemp(prefix="bench-view-"))
    broker = Mosquitto(data_dir=tmp / "broker").start()
    view = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitor",
            "view",
            "--broker",
            f"127.0.0.1:{broker.port}",
            "--listen",
            "127.0.0.1:0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(tmp / "view.log").open("wb"),
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert view.stdout is not None
    m = re.search(r"(http://\S+)", view.stdout.readline())
    assert m, (tmp / "view.log").read_text()
    url = m.group(1)
    fleet = StreamFleet(broker.port, devices=args.devices, fs=args.fs, chunk_s=args.chunk_s)
    fleet.start()
    alerts = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    alerts.connect("127.0.0.1", broker.port)
    alerts.loop_start()
    rng = random.Random(0)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(url)
            page.wait_for_function(
                f"document.querySelectorAll('.tile').length === {args.devices}", timeout=60_000
            )
            time.sleep(args.warmup)
            renderers, everything = chromium_procs()
            server = psutil.Process(view.pid)
            frames0 = page.evaluate("window.__view.stats.frames")
            c_server, c_rend, c_all = (
                cpu_seconds([server]),
                cpu_seconds(renderers),
                cpu_seconds(everything),
            )
            sent0 = fleet.sent
            load0 = os.getloadavg()[0]
            t0 = time.monotonic()
            n_alerts = 0
            while time.monotonic() - t0 < args.seconds:
                time.sleep(1.0)
                dev = fleet.devices[rng.randrange(len(fleet.devices))]
                now = time.time()
                seq = int((now - dev.t_origin - 1.0) * args.fs)
                body = {
                    "device_id": dev.id,
                    "seq": seq,
                    "ts": dev.t_origin + seq / args.fs,
                    "score": 30.0 + rng.random() * 20,
                    "threshold": 26.0,
                    "p_value": 0.0007,
                    "source": "stream",
                    "hr_bpm": 80.0,
                    "model": "bench",
                    "received_at": now,
                    "published_at": now,
                }
                alerts.publish(f"ecg/{dev.id}/alert", json.dumps(body), qos=1)
                n_alerts += 1
            elapsed = time.monotonic() - t0
            load = f"{load0:.1f} -> {os.getloadavg()[0]:.1f}"
            d_server = cpu_seconds([server]) - c_server
            d_rend = cpu_seconds(renderers) - c_rend
            d_all = cpu_seconds(everything) - c_all
            frames = page.evaluate("window.__view.stats.frames") - frames0
            sent = fleet.sent - sent0
            time.sleep(1.0)
            lat = page.evaluate(
                "[...window.__view.alarms.values()].filter(a => a.shown_at && a.published_at)"
                ".map(a => a.shown_at - a.published_at)"
            )
            visible = page.evaluate(
                "[...document.querySelectorAll('.tile')].filter(t => {"
                " const r = t.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight;"
                "}).length"
            )
            browser.close()
    finally:
        fleet.stop()
        alerts.loop_stop()
        alerts.disconnect()
        view.terminate()
        view.wait(10)
        broker.stop()
    lat = sorted(lat)
    return Result(
        devices=args.devices,
        fs=args.fs,
        chunk_s=args.chunk_s,
        seconds=round(elapsed, 1),
        server_pct=100 * d_server / elapsed,
        renderer_pct=100 * d_rend / elapsed,
        browser_pct=100 * d_all / elapsed,
        fps=frames / elapsed,
        visible=visible,
        alerts=len(lat),
        latency_p50_ms=1000 * lat[len(lat) // 2] if lat else float("nan"),
        latency_max_ms=1000 * lat[-1] if lat else float("nan"),
        messages_per_s=sent / elapsed,
        load=load,
    )


def render(results: list[Result], cmd: str) -> str:
    r = results[0]
    cols = " | ".join(f"{x.chunk_s:g} s chunks" for x in results)
    sep = "|".join("---:" for _ in results)

    def row(name: str, goal: str, fmt: str, values: list[object]) -> str:
        return f"| {name} | " + " | ".join(format(v, fmt) for v in values) + f" | {goal} |"  # type: ignore[arg-type]

    lines = [
        "## Central-station view (bench/view.py)",
        "",
        f"`{cmd}` on {platform.machine()} ({os.cpu_count()} cores, shared), "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}. {r.devices} simulated devices streaming "
        f"{r.fs:g} Hz as ECGS chunks (QoS 0), one stream alert per second; headless Debian "
        f"chromium, grid at 1600x900 ({r.visible} tiles on screen); CPU time (user+system, "
        f"/proc) over {r.seconds:g} s after a warm-up. Other jobs shared the two cores (1-min "
        "load average below): the page's frame rate suffers first, CPU time much less.",
        "",
        f"| measure | {cols} | goal |",
        f"|---|{sep}|---:|",
        row("messages/s to the view", "", ",.0f", [x.messages_per_s for x in results]),
        row(
            "view server (`ecg-monitor view`), % of one core",
            "< 20",
            ".1f",
            [x.server_pct for x in results],
        ),
        row("chromium renderer, % of one core", "", ".1f", [x.renderer_pct for x in results]),
        row(
            "chromium, all processes, % of one core",
            "< 50",
            ".1f",
            [x.browser_pct for x in results],
        ),
        row("frames drawn by the page per second", "30", ".1f", [x.fps for x in results]),
        "| alert published -> row on the page, p50 / max ms | "
        + " | ".join(f"{x.latency_p50_ms:.0f} / {x.latency_max_ms:.0f}" for x in results)
        + " | < 2000 |",
        "| 1-min load average, start -> end | " + " | ".join(x.load for x in results) + " | |",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--fs", type=float, default=250.0)
    p.add_argument(
        "--chunk-s", type=float, nargs="+", default=[0.25, 1.0], help="one run per chunk size"
    )
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args()
    if not Path(CHROMIUM).exists():
        print("bench/view.py: needs Debian's chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    results = []
    for chunk_s in args.chunk_s:
        results.append(run(argparse.Namespace(**{**vars(args), "chunk_s": chunk_s})))
    cmd = "python bench/view.py " + " ".join(sys.argv[1:])
    text = render(results, cmd.strip())
    print(text)
    if not args.no_write:
        update_section(ROOT / "BENCHMARKS.md", "view", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
