"""A URL's query string (maybe a signature) and userinfo are never shown: not by `shown_uri`,
not inside free text, not in a log line, structlog's or the stdlib's."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from eddy.base import log
from eddy.base.uris import scrub_uris, shown_uri

SIGNED = "https://user:pw@bucket.example.com:8443/data/f.bin?X-Amz-Signature=SECRETMARKER123#x"


@pytest.mark.parametrize(("uri", "shown"), [
    (SIGNED, "https://bucket.example.com:8443/data/f.bin?…"),
    ("https://host/dir/", "https://host/dir/"),
    ("local:///srv/data", "local:///srv/data"),
    ("s3://bucket/prefix", "s3://bucket/prefix"),
    ("http://[::1/x?token=SECRETMARKER123", "http://[::1/x?…"),  # no parser takes this one
])
def test_shown_uri_drops_query_and_userinfo(uri, shown):
    assert shown_uri(uri) == shown


def test_scrub_uris_finds_urls_and_request_targets_in_text():
    text = (f"cannot open {SIGNED}, then 'http://h/a?sig=SECRETMARKER123' and "
            '"GET /f.bin?X-Amz-Signature=SECRETMARKER123 HTTP/1.1" 200')
    scrubbed = scrub_uris(text)
    assert "SECRETMARKER123" not in scrubbed and "pw" not in scrubbed
    assert "https://bucket.example.com:8443/data/f.bin?…" in scrubbed
    assert "'http://h/a?…'" in scrubbed and '"GET /f.bin?… HTTP/1.1"' in scrubbed
    plain = "is 2 > 1? yes; mail root@node; local:///srv"
    assert scrub_uris(plain) == plain


@pytest.fixture
def log_stream():
    """`log.configure` onto a string, with a root handler of its own; undone afterwards."""
    stream = io.StringIO()
    saved = structlog.get_config()
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    log.configure("info", stream)
    yield stream
    root.removeHandler(handler)
    for other in root.handlers:
        for scrub in [f for f in other.filters if isinstance(f, log.ScrubUris)]:
            other.removeFilter(scrub)
    structlog.configure(**saved)


def test_log_lines_never_hold_a_query_string(log_stream):
    log.get("t").info("dataset.open", source=SIGNED,
                      request={"volume_context": {"source": SIGNED}}, hops=[SIGNED])
    logging.getLogger("urllib3.connectionpool").warning(
        "Retrying after connection broken: %s", "/f.bin?X-Amz-Signature=SECRETMARKER123")
    lines = log_stream.getvalue().splitlines()
    assert len(lines) == 2
    assert not [line for line in lines if "SECRETMARKER123" in line]
    event = json.loads(lines[0])
    assert event["source"] == "https://bucket.example.com:8443/data/f.bin?…"
    assert event["request"]["volume_context"]["source"] == event["source"]
    assert "/f.bin?…" in lines[1]
