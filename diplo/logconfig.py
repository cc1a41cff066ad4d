"""structlog set-up: key-value text for people, JSON lines for machines."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(fmt: str = "text", level: str = "warning") -> None:
    lvl = getattr(logging, level.upper(), logging.WARNING)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout if fmt == "json" else sys.stderr),
        cache_logger_on_first_use=False,
    )
