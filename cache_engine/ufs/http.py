"""Files on a web server as a dataset source (`http(s)://...`), through urllib3.

The shape is decided once, when the backend opens: a URL that ends in "/" (after redirects,
which stay within the URL's origin unless the node allows more: `redirects`) and
answers with an HTML page is a directory, listed by the links of its index page (nginx
autoindex, Apache mod_autoindex, Python's http.server; which links count: `http_index`); any
other URL is a dataset of that one file.

Files are read with ranged GETs. The version is the ETag, or size + Last-Modified when the
server sends none. A read of an ETag version sends If-Match and checks the answer's own
validators as well, so bytes of a newer file are never returned as the old one, also from
servers that ignore If-Match. Servers that ignore Range still work for small files: the whole
body is sliced.

Nothing is cached here (the engine caches metadata). One urllib3 pool serves every thread and
keeps at most `max_connections` connections per host, so a burst of reads stays polite.
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import urllib3

from eddy.base.uris import shown_uri

from ..spec import DatasetSpec
from .base import (
    Entry,
    Kind,
    UfsBackend,
    UfsUnavailable,
    VersionChanged,
    clean_path,
    join,
    read_path,
)
from .http_index import (
    decode_page,
    etag_of,
    failure_reason,
    header_int,
    index_children,
    is_etag,
    is_html,
    mtime_ns,
    version_of,
)
from .redirects import SAME_ORIGIN, RedirectPolicy
from .trickle import read_within

DEFAULT_TIMEOUT = urllib3.Timeout(connect=5.0, read=30.0)
# Retry failed connects, and a read error once: a keep-alive connection the server closed just
# as it was reused. HTTP statuses are never retried here.
DEFAULT_RETRIES = urllib3.Retry(
    total=8, connect=2, read=1, status=0, other=0, redirect=False, backoff_factor=0.1,
    raise_on_status=False, respect_retry_after_header=False,
)
MAX_UNRANGED = 16 << 20  # the largest file read whole from a server that ignores Range
MAX_INDEX_PAGE = 64 << 20
_DRAIN_LIMIT = 64 << 10  # unread bytes worth reading to keep a connection
_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "eddy-csi"}
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")


def _discard(resp) -> None:
    """Give the connection back to the pool: drained when little is left, else closed."""
    left = resp.length_remaining
    if not resp.closed and left is not None and left <= _DRAIN_LIMIT:
        with contextlib.suppress(urllib3.exceptions.HTTPError, OSError):
            resp.read(decode_content=False)
    if not resp.closed:
        resp.close()
    resp.release_conn()


class HttpUfs(UfsBackend):
    """A read-only view of one http(s) URL: a directory index, or a single file."""

    def __init__(
        self,
        spec: DatasetSpec,
        secrets: dict[str, str] | None = None,
        *,
        timeout: urllib3.Timeout = DEFAULT_TIMEOUT,
        retries: urllib3.Retry = DEFAULT_RETRIES,
        max_connections: int = 16,
        max_unranged: int = MAX_UNRANGED,
        redirects: RedirectPolicy = SAME_ORIGIN,
    ):
        del secrets  # http(s) sources are public: nothing to sign requests with
        parts = urlsplit(spec.source.root)
        url = urlunsplit((parts.scheme.lower(), parts.netloc, parts.path or "/", parts.query, ""))
        self.description = shown_uri(url)
        self.max_unranged = max_unranged
        self._redirects = redirects
        self._source_timeout = spec.source_timeout  # for a whole body (per recv: `timeout`)
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=max_connections, block=True, timeout=timeout, retries=retries
        )
        self._head_ok = True  # False once HEAD was refused and a 1-byte GET answered instead
        self._if_match_ok = True  # False once If-Match failed a weak ETag of an unchanged file
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        try:
            headers, _, final = self._head(url, "", need_size=False)
        except (FileNotFoundError, PermissionError) as e:
            self.close()
            raise UfsUnavailable(
                f"source {self.description} cannot be opened: {e.strerror}"
            ) from None
        except UfsUnavailable:
            self.close()
            raise
        final_parts = urlsplit(final)
        if final_parts.path.endswith("/") and is_html(headers):
            self._base = urlunsplit(final_parts[:3] + ("", ""))
            self._file_name: str | None = None
        else:
            self._base = url
            raw = parts.path.rstrip("/").rpartition("/")[2]
            name = unquote(raw)
            if not name or "/" in name or name in (".", ".."):
                name = raw if raw not in ("", ".") else "index"
            self._file_name = name

    # -- the UfsBackend interface ------------------------------------------------------------

    def stat(self, path: str) -> Entry:
        rel = clean_path(path)
        if not rel:
            return Entry("", Kind.DIR)
        if self._file_name is not None:
            return self._file_entry(rel, self._single_file_url(rel))
        parent, name = posixpath.split(rel)
        kind = self._children(parent).get(name)
        if kind is None:
            where = shown_uri(self._dir_url(parent))
            raise FileNotFoundError(errno.ENOENT, f"not listed in {where}", rel)
        if kind is Kind.DIR:
            return Entry(rel, Kind.DIR)
        return self._file_entry(rel, self._url(rel))

    def list(self, path: str) -> list[Entry]:
        rel = clean_path(path)
        if self._file_name is not None:
            if rel:
                self._single_file_url(rel)  # FileNotFoundError, or NotADirectoryError
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", rel)
            children = {self._file_name: Kind.FILE}
        else:
            children = self._children(rel)
        entries = {n: Entry(join(rel, n), Kind.DIR) for n, k in children.items() if k is Kind.DIR}
        files = sorted(n for n, k in children.items() if k is Kind.FILE)
        found = self._heads().map(self._listed_file, [join(rel, n) for n in files])
        for name, entry in zip(files, found, strict=True):
            if entry is not None:
                entries[name] = entry
        return [entries[n] for n in sorted(entries)]

    def read(self, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        rel = read_path(path, offset, length)
        url = self._single_file_url(rel) if self._file_name is not None else self._url(rel)
        chunks: list[bytes] = []
        while length > 0:
            data, total = self._read_range(url, rel, offset, length, version)
            chunks.append(data)
            offset += len(data)
            length -= len(data)
            if not data or (total is not None and offset >= total):
                break
        return b"".join(chunks)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self._pool.clear()

    # -- reading -----------------------------------------------------------------------------

    def _read_range(
        self, url: str, rel: str, offset: int, length: int, version: str | None
    ) -> tuple[bytes, int | None]:
        """Bytes at `offset` (fewer than asked if the server caps ranges) and the file size."""
        while True:
            headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
            if version and is_etag(version) and self._if_match_ok:
                headers["If-Match"] = f'"{version}"'
            resp, final = self._request("GET", url, rel, headers, allow=(412, 416))
            try:
                if resp.status != 412:
                    return self._ranged_body(resp, url, final, rel, offset, length, version)
            finally:
                _discard(resp)
            # Changed, or a weak ETag (If-Match compares strongly): HEAD tells which.
            if self._file_entry(rel, url).version != version:
                raise VersionChanged(errno.ESTALE, "file changed at the source", rel)
            self._if_match_ok = False

    def _ranged_body(
        self, resp, url: str, final: str, rel: str, offset: int, length: int,
        version: str | None,
    ) -> tuple[bytes, int | None]:
        if urlsplit(final).path.endswith("/") and not urlsplit(url).path.endswith("/"):
            raise IsADirectoryError(errno.EISDIR, "is a directory", rel)
        if resp.status == 416:  # at or after the end of the file
            if version:  # the end of the version asked for, or of a changed, shorter file?
                _discard(resp)  # before the HEAD: holding two connections could deadlock
                self._check_version(resp.headers, rel, url, version)
            return b"", None
        if resp.status == 206:
            match = _CONTENT_RANGE.match((resp.headers.get("Content-Range") or "").strip())
            if not match or int(match.group(1)) != offset:
                raise UfsUnavailable(f"{shown_uri(url)} answered with a range it was not asked for")
            total = None if match.group(3) == "*" else int(match.group(3))
            if version:
                self._check(resp.headers, total, version, rel)
            want = min(length, int(match.group(2)) - offset + 1)
            data = self._body(resp, url, want)
            if len(data) < want:
                raise UfsUnavailable(f"{shown_uri(url)} ended its answer early")
            return data[:want], total
        # 200: the server ignored Range and sends the whole file.
        size = header_int(resp.headers.get("Content-Length"))
        small = size is None or size <= self.max_unranged
        body = self._body(resp, url, self.max_unranged + 1) if small else b""
        if not small or len(body) > self.max_unranged:
            raise UfsUnavailable(
                f"{shown_uri(url)}: server does not support range requests, and the file is too "
                f"large to read whole (over {self.max_unranged} bytes)"
            )
        if size is not None and len(body) < size:
            raise UfsUnavailable(f"{shown_uri(url)} ended its answer early")
        if version:
            self._check(resp.headers, len(body), version, rel)
        return body[offset:offset + length], len(body)

    def _check(self, headers, total: int | None, version: str, rel: str) -> None:
        """Raise VersionChanged when an answer's validators show another version."""
        tag = etag_of(headers)
        if (is_etag(version) and not tag) or (total is None and not tag):
            return  # the answer carries nothing to tell by
        if version_of(headers, total) != version:
            raise VersionChanged(errno.ESTALE, "file changed at the source", rel)

    def _check_version(self, headers, rel: str, url: str, version: str) -> None:
        match = _UNSATISFIED_RANGE.match((headers.get("Content-Range") or "").strip())
        if etag_of(headers) and match:
            self._check(headers, int(match.group(1)), version, rel)
        elif self._file_entry(rel, url).version != version:
            raise VersionChanged(errno.ESTALE, "file changed at the source", rel)

    # -- metadata ----------------------------------------------------------------------------

    def _file_entry(self, rel: str, url: str) -> Entry:
        headers, size, _ = self._head(url, rel)
        return Entry(rel, Kind.FILE, size, mtime_ns(headers), version_of(headers, size))

    def _listed_file(self, rel: str) -> Entry | None:
        try:
            return self._file_entry(rel, self._url(rel) if self._file_name is None else self._base)
        except FileNotFoundError:
            return None  # listed, but gone by now

    def _head(self, url: str, rel: str, need_size: bool = True) -> tuple:
        """(headers, size, final URL) of `url`; a 1-byte GET where HEAD is refused."""
        refused = False
        if self._head_ok:
            resp, final = self._request("HEAD", url, rel, allow=(403, 405, 501))
            _discard(resp)
            size = header_int(resp.headers.get("Content-Length"))
            if resp.status < 300 and (size is not None or not need_size):
                return resp.headers, size, final
            refused = resp.status >= 300  # 403: URLs signed for GET only refuse HEAD
        resp, final = self._request("GET", url, rel, {"Range": "bytes=0-0"}, allow=(416,))
        _discard(resp)
        content_range = (resp.headers.get("Content-Range") or "").strip()
        match = _CONTENT_RANGE.match(content_range) or _UNSATISFIED_RANGE.match(content_range)
        if resp.status in (206, 416):
            size = header_int(match.groups()[-1]) if match else None
        else:
            size = header_int(resp.headers.get("Content-Length"))
        if size is None and need_size:
            raise UfsUnavailable(f"{shown_uri(url)} does not tell the size of the file")
        if refused:
            self._head_ok = False
        return resp.headers, size, final

    def _children(self, rel: str) -> dict[str, Kind]:
        """The index page of the directory `rel`, parsed."""
        url = self._dir_url(rel)
        try:
            resp, final = self._request("GET", url, rel)
        except FileNotFoundError:
            if rel and self._is_file(rel):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", rel) from None
            raise
        try:
            if not is_html(resp.headers):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", rel)
            body = self._body(resp, url, MAX_INDEX_PAGE + 1, decode=True)
        finally:
            _discard(resp)
        if len(body) > MAX_INDEX_PAGE:
            raise UfsUnavailable(f"the index page {shown_uri(url)} is over {MAX_INDEX_PAGE} bytes")
        return index_children(decode_page(body, resp.headers), final)

    def _is_file(self, rel: str) -> bool:
        parent, name = posixpath.split(rel)
        try:
            return self._children(parent).get(name) is Kind.FILE
        except (FileNotFoundError, NotADirectoryError):
            return False

    # -- URLs and the HTTP boundary ----------------------------------------------------------

    def _url(self, rel: str) -> str:
        return self._base + "/".join(quote(seg, safe="") for seg in rel.split("/"))

    def _dir_url(self, rel: str) -> str:
        return self._url(rel) + "/" if rel else self._base

    def _single_file_url(self, rel: str) -> str:
        if rel == self._file_name:
            return self._base
        if rel.startswith(f"{self._file_name}/"):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", rel)
        raise FileNotFoundError(errno.ENOENT, f"{self.description} holds one file only", rel)

    def _heads(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(8, thread_name_prefix="eddy-http-stat")
            return self._executor

    def _request(self, method: str, url: str, rel: str, headers: dict | None = None,
                 allow: tuple[int, ...] = ()) -> tuple:
        """A streamed response with a 2xx status or one in `allow`, after the redirects the
        node allows (`redirects.py`), and the URL that gave it; anything else raised as the
        UfsBackend error for it. The caller reads the body and calls `_discard`."""
        def send(method: str, url: str):
            try:
                return self._pool.request(
                    method, url, headers={**_HEADERS, **(headers or {})},
                    preload_content=False, decode_content=False, redirect=False)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise UfsUnavailable(
                    f"{shown_uri(url)} cannot be reached: {failure_reason(e)}") from None

        resp, url = self._redirects.follow(send, method, url, _discard)
        status = resp.status
        if status < 300 or status in allow:
            return resp, url
        _discard(resp)
        if status in (404, 410):
            raise FileNotFoundError(
                errno.ENOENT, f"not found at {shown_uri(url)} (HTTP {status})", rel
            )
        if status in (401, 403, 407):
            raise PermissionError(
                errno.EACCES, f"access to {shown_uri(url)} was denied (HTTP {status}); "
                "eddy reads public http(s) sources only", rel,
            )
        reason = (resp.reason or "")[:100]
        raise UfsUnavailable(f"{shown_uri(url)} answered HTTP {status} {reason}".rstrip())

    def _body(self, resp, url: str, limit: int, decode: bool = False) -> bytes:
        """Up to `limit` bytes of the body; file bytes are never decoded (ranges count raw)."""
        try:
            return read_within(resp, url, limit, decode, self._source_timeout)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise UfsUnavailable(f"{shown_uri(url)} cannot be read: {failure_reason(e)}") from None
