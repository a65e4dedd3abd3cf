"""`ecg-monitor` command line: the table of subcommands, `--version`, and the help layout.

Each subcommand's module provides `configure(parser)` and `main(args) -> int`; the texts a
user reads in `--help` live here, next to the table.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Mapping, Sequence

import monitor

DESCRIPTION = (
    "Streaming ECG anomaly monitor: score heartbeat windows arriving over MQTT with an ONNX "
    "autoencoder and publish an alert for each anomalous beat. Also a simulated device fleet, "
    "an alert viewer and a one-command demo of the whole system."
)

# subcommand -> (module, one-line help, description shown by `ecg-monitor COMMAND --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": (
        "monitor.service",
        "run the daemon",
        "Run the daemon: read heartbeat windows from MQTT, score them with the ONNX model and "
        "publish alerts. Every setting is read from the TOML file; configs/monitor.toml lists each "
        "one with its default. SIGTERM or Ctrl-C finishes the windows already received and "
        "stops (a second Ctrl-C stops at once); SIGHUP reloads the model. Exit status: 0 "
        "stopped cleanly, 1 fatal error or forced stop, 3 bad configuration or model at start.",
    ),
    "simulate": (
        "monitor.simulate",
        "a simulated device fleet publishing heartbeat windows",
        "Publish heartbeat windows from a simulated fleet of ECG devices: synthetic beats with "
        "labelled anomalies, or a UCR file replayed with its labels. --ground-truth records "
        "what each device sent, to score the alerts against.",
    ),
    "alerts": (
        "monitor.consumer",
        "print alerts as they arrive",
        "Print alerts (and, with --rejects, rejected messages) as they arrive: a table on a "
        "terminal, one JSON object per line when the output is piped.",
    ),
    "demo": (
        "monitor.demo",
        "broker, daemon, fleet and alert view on this machine",
        "The whole system on this machine: a broker, the daemon with the bundled model, a "
        "simulated fleet and a live alert view, ending with a summary scored against what "
        "the fleet really sent. Alerts go to stdout (a table on a terminal, JSON lines when "
        "piped); progress and the summary go to stderr.",
    ),
    "view": (
        "monitor.view",
        "live central-station web page: strips, heart rate, quality, alarms",
        "Serve a live web page for the people watching the fleet: each device's ECG strip, heart "
        "rate, signal quality and alarms, with the offending beat marked, and an alarm list "
        "that can be acknowledged. Reads MQTT only, never publishes. Needs the view extra "
        "(aiohttp).",
    ),
}


def package_version() -> str:
    """The installed distribution's version, or the source tree's when run uninstalled."""
    try:
        return importlib.metadata.version("ecg-monitor")
    except importlib.metadata.PackageNotFoundError:
        return monitor.__version__


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to every option that has a default its help does not state."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text.lower()
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or default == []
        ):
            return text
        if isinstance(default, list | tuple):
            return f"{text} (default: {','.join(map(str, default))})"
        return f"{text} (default: %(default)s)"


def use_formatter(parser: argparse.ArgumentParser) -> None:
    """HelpFormatter for this parser and every subcommand parser below it."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                use_formatter(child)


def build_cli(
    prog: str, description: str, commands: Mapping[str, tuple[str, str, str]]
) -> argparse.ArgumentParser:
    """A parser with --version and one subcommand per entry of `commands`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text, text) in commands.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=text)
        module.configure(p)
        p.set_defaults(_module=module)
    use_formatter(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    return build_cli("ecg-monitor", DESCRIPTION, COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.main(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
