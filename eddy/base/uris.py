"""How a URI is shown to people: never with its query string or its userinfo.

A source URL may carry a credential in its query (a presigned `?X-Amz-Signature=...`) or in its
userinfo. eddy sends the real URL to the source and keeps it in the dataset's identity, but
everything a person or a scraper can read (log lines, error messages, `eddy status`, metrics)
shows it through `shown_uri`: `https://host/path?…`. `scrub_uris` does the same to every URL
inside a free text (a log field, an error from a library), and to a bare request target with a
query ("GET /file?sig=..."), which is how HTTP libraries log requests.
"""

from __future__ import annotations

import re

QUERY_SHOWN = "?…"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>\\]*")
_TARGET = re.compile(r"(?<![\w.~%-])(/[^\s?#\"'<>\\]*)\?[^\s\"'<>\\]+")


def shown_uri(uri: str) -> str:
    """`uri` without userinfo and fragment, its query (if any) elided to "?…".

    Plain string surgery, no URL parser: it must also cope with a URI no parser accepts."""
    head, query, _ = uri.partition("?")
    head = head.partition("#")[0]
    scheme, sep, rest = head.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        head = f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
    return head + (QUERY_SHOWN if query else "")


def scrub_uris(text: str) -> str:
    """`text` with every URL in it shown as by `shown_uri`, and the query of every request
    target ("/path?query") elided."""
    if "?" not in text and "@" not in text:
        return text  # the common case, on every log line
    text = _URL.sub(lambda m: shown_uri(m.group()), text)
    return _TARGET.sub(lambda m: m.group(1) + QUERY_SHOWN, text)
