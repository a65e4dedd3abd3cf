"""`ecg-monitor demo` starts the central-station view, prints its URL and stops it at the end."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from typing import Any

import pytest

from tests.monitor.test_demo import DemoProcess, port_free, survivors

pytest.importorskip("aiohttp", reason="the view needs aiohttp (the view extra)")


def _state(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "api/state", timeout=5) as r:
        body: dict[str, Any] = json.load(r)
    return body


def test_demo_serves_the_view_and_stops_it() -> None:
    demo = DemoProcess(
        "--duration", "8", "--devices", "3", "--rate", "10", "--view-listen", "127.0.0.1:0"
    )
    try:
        line = demo.wait_for("view")
        m = re.search(r"(http://127\.0\.0\.1:(\d+)/)", line)
        assert m, line
        url, port = m.group(1), int(m.group(2))
        deadline = time.monotonic() + 30
        state = _state(url)
        while time.monotonic() < deadline and not (state["alarms"] and state["meta"]["daemons"]):
            time.sleep(0.2)
            state = _state(url)
        assert [d["state"] for d in state["meta"]["daemons"]] == ["online"]
        assert state["alarms"], "the demo's alerts reach the view"
        assert {a["kind"] for a in state["alarms"]} == {"window"}
        code = demo.finish(timeout=60)
    finally:
        demo.proc.kill()
    assert code == 0, demo.stderr()
    assert survivors(demo.tag) == []
    assert port_free(port)
