"""structlog setup: JSON lines when not on a TTY (systemd, files), pretty console on a TTY."""

from __future__ import annotations

import logging
import os
import sys

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def setup_logging(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog for the daemon; events go to stderr (journald under systemd)."""
    if fmt == "auto":
        on_tty = sys.stderr.isatty() and "JOURNAL_STREAM" not in os.environ
        fmt = "console" if on_tty else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
