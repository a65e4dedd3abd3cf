"""`ecg-monitor` command line: each subcommand lives in the module named after its job."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, help). Each module provides
#   configure(parser: argparse.ArgumentParser) -> None
#   main(args: argparse.Namespace) -> int
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("monitor.service", "run the daemon"),
    "simulate": ("monitor.simulate", "a simulated device fleet publishing heartbeat windows"),
    "alerts": ("monitor.consumer", "print alerts as they arrive"),
    "demo": ("monitor.demo", "broker, daemon, fleet and alert view on this machine"),
    "view": ("monitor.view", "live central-station web page: strips, heart rate, quality, alarms"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecg-monitor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.configure(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.main(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
