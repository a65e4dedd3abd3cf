"""Live central-station view in the browser: every device's ECG strip, heart rate, signal
quality and alarms, fed from MQTT (read-only). Needs the `view` extra (aiohttp)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from monitor.broker import BrokerError, ClientOptions, add_client_options


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (port 0: any free port) or `[v6addr]:PORT`."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--listen must be HOST:PORT, got {text!r}")
    return host, int(port)


def configure(parser: argparse.ArgumentParser) -> None:
    add_client_options(parser)
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="where the page is served (127.0.0.1: this machine only)",
    )
    parser.add_argument("--prefix", default="ecg", help="topic prefix")
    # The view needs nothing from MQTT 5, and paho decodes each MQTT 5 message's properties in
    # Python: a third of the view's CPU at hundreds of stream chunks a second.
    parser.set_defaults(mqtt_version="3.1.1")


def main(args: argparse.Namespace) -> int:
    try:
        from monitor.view.server import serve  # noqa: PLC0415 (aiohttp: the view extra)
    except ImportError as e:
        print(
            f"ecg-monitor view: {e.name or e} is missing: pip install 'ecg-monitor[view]'",
            file=sys.stderr,
        )
        return 2
    host, port = args.listen
    try:
        return asyncio.run(
            serve(
                ClientOptions.from_args(args),
                prefix=args.prefix,
                host=host,
                port=port,
                client_id=f"ecg-view-{os.getpid()}",
            )
        )
    except BrokerError as e:
        print(f"ecg-monitor view: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"ecg-monitor view: cannot listen on {host}:{port}: {e}", file=sys.stderr)
        return 2
