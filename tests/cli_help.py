"""Checks shared by the tests of both command lines: what `--help` shows a user."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

# Words of a developer's note, not of a user's help.
DEVELOPER_WORDS = (
    "module",
    "subcommand lives",
    "DESIGN.md",
    "numpy only",
    "docstring",
    "the seed's",
)


def parsers(
    parser: argparse.ArgumentParser, name: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The parser and every subcommand parser below it, with its command line."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, child in action.choices.items():
                yield from parsers(child, f"{name} {sub_name}")


def check_help(parser: argparse.ArgumentParser, name: str) -> None:
    """Every option has help, every default is shown, the description is for users."""
    for command, p in parsers(parser, name):
        text = " ".join(p.format_help().split())
        assert p.description, f"{command}: no description"
        for word in DEVELOPER_WORDS:
            assert word not in p.description, f"{command}: {word!r} in {p.description!r}"
        for action in p._actions:
            if not action.option_strings or isinstance(action, argparse._SubParsersAction):
                continue
            flag = action.option_strings[-1]
            assert action.help, f"{command} {flag}: no help text"
            default = action.default
            if (
                default in (None, [], argparse.SUPPRESS)
                or isinstance(default, bool)  # a flag: its help says what it switches
                or flag in ("--help", "--version")
            ):
                continue
            shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
            assert f"(default: {shown})" in text, f"{command} {flag}: default {shown} not shown"
