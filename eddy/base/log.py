"""Structured logging: one JSON object per line, secrets never included.

`configure()` is called once by each process entry point (serve, mount daemon, CLI).
`redact()` removes secret values from request-shaped dicts before they are logged. Every line,
structlog's and the stdlib's (urllib3, grpc), has the query strings and userinfo of the URLs in
it elided (`eddy.base.uris`): a presigned source URL is a secret too.
"""

import logging
import sys
from collections.abc import Callable, Mapping
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
    for key, value in event.items():
        event[key] = _walk(value, scrub_uris)
    return event


def _walk(value: Any, leaf: Callable[[str], str], hidden: frozenset = frozenset()) -> Any:
    """A copy of `value` with each string through `leaf`, and fields named in `hidden` (when
    set) replaced by a marker, at any depth."""
    if isinstance(value, str):
        return leaf(value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if k in hidden and v else _walk(v, leaf, hidden))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, leaf, hidden) for v in value]
    return value


class ScrubUris(logging.Filter):
    """Elides the URLs' queries in a stdlib record's message (urllib3 logs its request targets)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub_uris(record.getMessage()), None  # formatted once
        return True


def get(name: str | None = None, **bound: Any):
    return structlog.get_logger(name, **bound)


def redact(value: Any) -> Any:
    """A copy of `value` with every secret-named field replaced by a marker, recursively."""
    return _walk(value, str, SECRET_KEYS)
