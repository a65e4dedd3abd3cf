"""How the view's browser checks start Chromium: the test (tests/view/test_view.py), the
benchmark (bench/view.py) and the README screenshots (tools/screenshots.py) all launch the same
headless Debian chromium with the same flags, so what the benchmark measures is what the test
drives.
"""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch_chromium(pw: Any) -> Any:
    """A headless chromium browser from a playwright instance (`sync_playwright()`'s)."""
    return pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
