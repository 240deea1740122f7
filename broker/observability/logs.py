"""Structured logs: JSON lines in production, readable lines in a terminal; the request id on every line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from broker.observability import tracing


def _dumps(event: object, **_: object) -> bytes:
    return orjson.dumps(event, default=str)


def _dumps_text(event: object, **_: object) -> str:
    return orjson.dumps(event, default=str).decode()


def configure(fmt: str = "console", level: int = logging.INFO) -> None:
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        tracing.log_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    factory: Callable[..., Any] = structlog.PrintLoggerFactory(sys.stderr)
    if fmt == "json":
        # orjson: one line per exchange is on the hot path, and the standard library's encoder cost a third more
        # per line (154 against 115 us on the shared box, benchmark in the commit); anything orjson cannot encode
        # is written as its str(), as structlog's default writes its repr()
        renderer = structlog.processors.JSONRenderer(serializer=_dumps_text)
        shared.append(structlog.processors.format_exc_info)
        binary = getattr(sys.stderr, "buffer", None)
        if binary is not None:  # bytes straight to the file: one write per line, where print made two
            renderer = structlog.processors.JSONRenderer(serializer=_dumps)
            factory = structlog.BytesLoggerFactory(binary)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # aiohttp's access log and asyncpg go through the standard library; keep them quiet but visible
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
