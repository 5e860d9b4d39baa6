"""What a web server's answers say about its files: validators and directory index pages;
and what a failure to answer says (`failure_reason`).

`http.HttpUfs` asks the server; this reads what came back. A file's version is its ETag, or
size + Last-Modified when the server sends none; a directory's children are the links of its
index page that resolve, on the same origin and without a query, to one path segment below it
(which leaves out "../", Apache's absolute parent link, its sort links "?C=N;O=D" and links to
other sites).
Kept apart from the transport so each can be read (and tested) on its own.
"""

from __future__ import annotations

import codecs
import re
from datetime import UTC
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from urllib.parse import unquote, urljoin, urlsplit

from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from .base import Kind

CHARSET = re.compile(r"charset=\"?([A-Za-z0-9_.:-]+)", re.IGNORECASE)
DEFAULT_PORTS = {"http": 80, "https": 443}
_REASONS = (  # the most specific first
    (NameResolutionError, "host name does not resolve"),
    (NewConnectionError, "cannot connect (connection refused or host unreachable)"),
    (ConnectTimeoutError, "connect timed out"),
    (ReadTimeoutError, "read timed out"),
    (SSLError, "TLS failed (certificate or handshake)"),
    (ProtocolError, "connection broken"),
)


def failure_reason(e: Exception) -> str:
    """Why a request got no answer, in words (urllib3's own text may hold the URL)."""
    if isinstance(e, MaxRetryError) and e.reason is not None:
        e = e.reason
    return next((text for cls, text in _REASONS if isinstance(e, cls)), type(e).__name__)


def etag_of(headers) -> str:
    tag = (headers.get("ETag") or "").strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    return tag.strip('"')


def mtime_ns(headers) -> int:
    try:
        when = parsedate_to_datetime(headers.get("Last-Modified") or "")
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp()) * 1_000_000_000


def version_of(headers, size: int | None) -> str:
    """The ETag, else size + Last-Modified (with a space, which no ETag contains)."""
    return etag_of(headers) or f"size={size} mtime={mtime_ns(headers)}"


def is_etag(version: str) -> bool:
    return " " not in version


def header_int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def is_html(headers) -> bool:
    return (headers.get("Content-Type") or "").split(";")[0].strip().lower() == "text/html"


def url_origin(url: str) -> tuple:
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return ("invalid", url)
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v.strip() for k, v in attrs if k == "href" and v)


def index_children(page: str, page_url: str) -> dict[str, Kind]:
    """Name -> FILE or DIR for each child an index page links to (DIR: the link ends in "/").

    Names are percent-decoded; a name that is not UTF-8 or holds a "/" cannot be a path
    segment and is left out.
    """
    parser = _Links()
    parser.feed(page)
    parser.close()
    origin = url_origin(page_url)
    base = unquote(urlsplit(page_url).path)
    base = base if base.endswith("/") else base + "/"
    out: dict[str, Kind] = {}
    for href in parser.hrefs:
        link = urljoin(page_url, href)
        parts = urlsplit(link)
        if parts.query or url_origin(link) != origin:
            continue
        try:
            path = unquote(parts.path, errors="strict")
        except UnicodeDecodeError:
            continue
        if not path.startswith(base):
            continue
        rest = path[len(base):]
        is_dir = rest.endswith("/")
        name = rest[:-1] if is_dir else rest
        if not name or "/" in name or name in (".", "..") or "\x00" in name:
            continue
        if is_dir or name not in out:
            out[name] = Kind.DIR if is_dir else Kind.FILE
    return out


def decode_page(body: bytes, headers) -> str:
    match = CHARSET.search(headers.get("Content-Type") or "")
    charset = match.group(1) if match else "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    return body.decode(charset, errors="replace")
