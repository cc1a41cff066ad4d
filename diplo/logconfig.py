"""structlog set-up: key-value text for people, JSON lines for machines.

Tracebacks never show local variables: a reconcile's locals hold the apps' environment
and, during a reload, the whole serve environment (tokens, webhook secrets)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(fmt: str = "text", level: str = "warning") -> None:
    lvl = getattr(logging, level.upper(), logging.WARNING)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors += [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors.append(
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout if fmt == "json" else sys.stderr),
        cache_logger_on_first_use=False,
    )
