"""Structured logging: one JSON object per line, secrets never included.

`configure()` is called once by each process entry point (serve, mount daemon, CLI).
`redact()` removes secret values from request-shaped dicts before they are logged. Every line,
structlog's and the stdlib's (urllib3, grpc), has the query strings and userinfo of the URLs in
it elided (`eddy.base.uris`): a presigned source URL is a secret too.
"""

import logging
import sys
from collections.abc import Mapping
from typing import Any

import structlog

from eddy.base.uris import scrub_uris

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
            scrub_event,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ScrubUris) for f in handler.filters):
            handler.addFilter(ScrubUris())


def scrub_event(logger, method: str, event: dict) -> dict:
    """structlog processor: every string in the event, nested ones too, through `scrub_uris`."""
    return _scrubbed(event)


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_uris(value)
    if isinstance(value, Mapping):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v) for v in value]
    return value


class ScrubUris(logging.Filter):
    """Elides the URLs' queries in a stdlib record's message (urllib3 logs its request targets)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = scrub_uris(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


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
