"""Screenshots of the central-station view for the README: docs/img/view-grid.png and
docs/img/view-device.png.

    .venv/bin/python tools/screenshots.py            # needs mosquitto and Debian's chromium

Runs the real thing: a mosquitto of its own, `ecg-monitor run` in stream mode (the bundled dense
model with a stream segmentation, tests/view/fleet.py:stream_model), `ecg-monitor view`, and a
fleet of 24 streaming beds (tests/view/fleet.py). Two beds get a wide premature beat (the
daemon alerts them), one loses its electrode (a flat line: the daemon calls it lead_off), one
alarm is acknowledged; then headless chromium takes the pictures.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.brokers import Mosquitto  # noqa: E402
from tests.monitor.daemon import Collector, Daemon, wait_online, write_config  # noqa: E402
from tests.view.fleet import StreamFleet, stream_model  # noqa: E402

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 (dev extra)

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="view-shots-"))
    broker = Mosquitto(data_dir=tmp / "broker").start()
    cfg = write_config(
        tmp / "monitor.toml",
        broker.port,
        stream_model(tmp / "stream.onnx"),
        streams={"enabled": True},
        service={"instance_id": "ward-3", "log_format": "json"},
    )
    daemon = Daemon(cfg).start()
    collector = Collector(broker.port, ["ecg-monitor/+/status", "ecg/+/alert", "ecg/+/quality"])
    view: subprocess.Popen[str] | None = None
    fleet = StreamFleet(broker.port, devices=24, chunk_s=0.25, seed=3)
    try:
        wait_online(collector, "ward-3", timeout=60)
        command = [sys.executable, "-m", "monitor", "view", "--listen", "127.0.0.1:0"]
        view = subprocess.Popen(
            [*command, "--broker", f"127.0.0.1:{broker.port}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert view.stdout is not None
        m = re.search(r"(http://\S+)", view.stdout.readline())
        assert m, "the view did not start"
        url = m.group(1)
        fleet.start()

        def quality(d: str) -> str | None:
            q = collector.of(f"/{d}/quality")
            return q[-1]["state"] if q else None

        collector.wait_for(lambda: all(quality(d) == "good" for d in fleet.ids), 60, "good")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(url)
            fleet.start_lead_off("bed-006", 600.0)
            for device in ("bed-002", "bed-009", "bed-017"):
                fleet.inject_wide_beat(device, after_s=0.5)
                time.sleep(2.5)
            collector.wait_for(lambda: len(collector.of("/alert")) >= 3, 30, "three alerts")
            collector.wait_for(lambda: quality("bed-006") == "lead_off", 60, "lead off")
            page.wait_for_selector('#alarm-list tr[data-device="bed-017"]')
            page.click('#alarm-list tr[data-device="bed-009"] button')  # acknowledged
            time.sleep(1.0)  # the marked beats are still on their strips
            page.screenshot(path=str(args.out / "view-grid.png"))
            page.click('.tile[data-id="bed-002"]')
            page.wait_for_selector("#device-view:not([hidden]) .beat canvas")
            time.sleep(3.0)
            page.screenshot(path=str(args.out / "view-device.png"))
            browser.close()
    finally:
        fleet.stop()
        collector.close()
        if view is not None:
            view.terminate()
            view.wait(10)
        daemon.stop()
        broker.stop()
    print(f"wrote {args.out / 'view-grid.png'} and {args.out / 'view-device.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
