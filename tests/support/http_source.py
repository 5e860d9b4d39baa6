"""A small HTTP file server on 127.0.0.1 that counts every request, for tests of http sources.

It serves a directory the way nginx autoindex or `python -m http.server` does (an HTML index
page per directory, a 301 to add the trailing slash), and serves files with what eddy's http
backend uses: HEAD, single ranges (206 with Content-Range, 416 past the end), an ETag and
If-Match (412 when the file changed). Every request is recorded, so a test can tell file data
(a GET of a file) from metadata (HEADs and index pages) and assert a cache hit costs nothing.
Clearing `gate` holds every GET of file data until it is set again: a source that stalls (with
`hold_all` set, every request waits, HEADs and index pages too: a server that stops answering);
setting `drip` sends file data one byte per `drip` seconds: a source that trickles.

    with HttpSource(root) as http:
        params = {"source": http.url}
        ...
        assert http.data_gets() == []
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
GATE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # as sent, with the query if any
    kind: str  # "file", "dir" or "missing": what the path named when it was asked
    range: str | None = None

    @property
    def is_data(self) -> bool:
        """A GET of file bytes (HEADs and index pages are metadata)."""
        return self.method == "GET" and self.kind == "file"


def etag_of(st: os.stat_result) -> str:
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"'


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    source: HttpSource  # set on the per-server subclass

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def _record(self) -> Request:
        path = self.translate_path(self.path)
        kind = "dir" if os.path.isdir(path) else "file" if os.path.isfile(path) else "missing"
        request = Request(self.command, self.path, kind, self.headers.get("Range"))
        self.source._record(request)
        return request

    def do_GET(self) -> None:
        if self._record().is_data or self.source.hold_all:
            self.source.gate.wait(GATE_TIMEOUT)
        super().do_GET()

    def copyfile(self, source, outputfile) -> None:
        if not self.source.drip:
            return super().copyfile(source, outputfile)
        try:
            while (byte := source.read(1)) and self.source.drip:
                outputfile.write(byte)
                outputfile.flush()
                time.sleep(self.source.drip)
            outputfile.write(source.read())
        except OSError:
            self.close_connection = True  # the client gave up

    def do_HEAD(self) -> None:
        self._record()
        if self.source.hold_all:
            self.source.gate.wait(GATE_TIMEOUT)
        super().do_HEAD()

    def send_head(self):
        path = self.translate_path(self.path)
        if os.path.isdir(path):
            return super().send_head()  # index page, or 301 to add the slash
        try:
            f = open(path, "rb")  # noqa: SIM115 - returned to the caller, which closes it
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        with f:
            st = os.fstat(f.fileno())
            etag = etag_of(st)
            if_match = self.headers.get("If-Match")
            if if_match and if_match.strip() != "*" and etag not in (
                    t.strip() for t in if_match.split(",")):
                self._empty(HTTPStatus.PRECONDITION_FAILED, etag)
                return None
            size = st.st_size
            start, end = 0, size - 1
            status = HTTPStatus.OK
            match = _RANGE.match((self.headers.get("Range") or "").strip())
            if match:
                start = int(match.group(1))
                end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
                if start >= size or start > end:
                    self._empty(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, etag,
                                {"Content-Range": f"bytes */{size}"})
                    return None
                status = HTTPStatus.PARTIAL_CONTENT
            f.seek(start)
            body = f.read(end - start + 1) if size else b""
        self.send_response(status)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", formatdate(st.st_mtime, usegmt=True))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        return io.BytesIO(body)

    def _empty(self, status: HTTPStatus, etag: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("ETag", etag)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


class HttpSource:
    """`root` served at `url` (ends in "/") until stop(); `requests` lists what was asked."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self.gate = threading.Event()  # cleared: file data waits (a source that stalls)
        self.gate.set()
        self.hold_all = False  # set: the gate holds every request, not only file data
        self.drip = 0.0  # seconds between bytes of file data (0: no trickle)
        handler = type("Handler", (_Handler,), {"source": self})
        root = self.root

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request, client_address):
                handler(request, client_address, self, directory=root)

        self._server = Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="http-source", daemon=True)

    def start(self) -> HttpSource:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HttpSource:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def mark(self) -> int:
        """A position in the request log: pass it to `since` to see only later requests."""
        with self._lock:
            return len(self._requests)

    def since(self, mark: int) -> list[Request]:
        with self._lock:
            return self._requests[mark:]

    def data_gets(self, mark: int = 0) -> list[Request]:
        return [r for r in self.since(mark) if r.is_data]
