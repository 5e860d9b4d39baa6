"""Structured logging: one JSON object per line, secrets never included.

`configure()` is called once by each process entry point (serve, mount daemon, CLI).
`redact()` removes secret values from request-shaped dicts before they are logged.
"""

import logging
import sys
from collections.abc import Mapping
from typing import Any

import structlog

# Field names whose values are never logged, wherever they appear.
SECRET_KEYS = frozenset({"secrets", "secretAccessKey", "sessionToken", "accessKeyId", "password"})
REDACTED = "***"


def configure(level: str = "info", stream=None) -> None:
    """Send JSON lines to stderr (or `stream`) at `level`."""
    logging.basicConfig(format="%(message)s", stream=stream or sys.stderr, level=level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(name: str | None = None, **bound: Any):
    return structlog.get_logger(name, **bound)


def redact(value: Any) -> Any:
    """A copy of `value` with every secret-named field replaced by a marker, recursively."""
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if k in SECRET_KEYS and v else redact(v)) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value
