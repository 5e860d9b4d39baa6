"""The http(s) source against a real HTTP server on 127.0.0.1 that serves a temp directory.

Python's SimpleHTTPRequestHandler knows neither Range nor ETag, so `_RangeHandler` adds them
(206 + Content-Range, 416, ETag, If-Match, If-Range); switches on the server make it behave
like the servers eddy must also cope with: no ETag, weak ETags, Range or If-Match ignored,
HEAD refused, capped ranges, error statuses. Its directory pages are http.server's own index.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from cache_engine.spec import parse_parameters
from cache_engine.ufs import Kind, UfsUnavailable, VersionChanged, open_ufs
from cache_engine.ufs.http import HttpUfs, index_children
from cache_engine.ufs.redirects import RedirectPolicy
from eddy.base.errors import InvalidArgument

BIG = random.Random(11).randbytes(5 << 20)
ODD = "100% sure?#+.txt"
UNICODE = "ünïcödé 数据.bin"
FILES = {
    "a.txt": b"hello world\n",
    "empty.bin": b"",
    "big.bin": BIG,
    "with space.txt": b"spaced",
    UNICODE: b"unicode bytes",
    ODD: b"odd name",
    "sub dir/inner.txt": b"inner",
    "sub dir/deeper/leaf.txt": b"leaf",
    "sub dir/deeper/ß/x.bin": b"x" * 1000,
}


class _RangeHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is visible
    timeout = 10

    def setup(self):
        super().setup()
        self.server.opened(self.connection)

    def finish(self):
        super().finish()
        self.server.closed(self.connection)

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        if self.server.opts.no_head:
            self.send_error(405)
            return
        self._serve(super().do_HEAD)

    def do_GET(self):
        self._serve(super().do_GET)

    def _serve(self, handle):
        self.server.log.append((self.command, self.path, dict(self.headers)))
        target = self.server.opts.redirect.get(self.path.split("?")[0])
        if target:
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = self.server.opts.status.get(self.path.split("?")[0])
        if status:
            self.send_error(status)
            return
        handle()

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()  # index pages, redirects to "dir/", 404
        opts = self.server.opts
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
        etag = f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'
        headers = {"Content-Type": self.guess_type(path), "Accept-Ranges": "bytes",
                   "Last-Modified": formatdate(st.st_mtime, usegmt=True)}
        if opts.etag:
            headers["ETag"] = f"W/{etag}" if opts.weak_etag else etag
        strong = opts.etag and not opts.weak_etag
        if_match = self.headers.get("If-Match")
        if if_match and opts.if_match and not (
            if_match.strip() == "*" or (strong and etag in [t.strip() for t in if_match.split(",")])
        ):
            return self._reply(412, headers, b"")
        rng = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        if rng and opts.ranges and (not if_range or (strong and if_range.strip() == etag)):
            first, last = rng.groups()
            if first:
                start, end = int(first), int(last) if last else len(data) - 1
            else:
                start, end = max(0, len(data) - int(last)), len(data) - 1
            if start >= len(data):
                return self._reply(416, {**headers, "Content-Range": f"bytes */{len(data)}"}, b"")
            end = min(end, len(data) - 1, start + (opts.max_range or len(data)) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._reply(206, headers, data[start:end + 1])
        return self._reply(200, headers, data)

    def _reply(self, status, headers, body):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root, **opts):
        super().__init__(("127.0.0.1", 0), partial(_RangeHandler, directory=str(root)))
        self.opts = SimpleNamespace(etag=True, weak_etag=False, ranges=True, if_match=True,
                                    no_head=False, max_range=None, status={},
                                    redirect={})
        vars(self.opts).update(opts)
        self.log: list[tuple[str, str, dict]] = []
        self.connections_opened = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address):
        pass  # a client that hangs up on a body it does not want is no error here

    def opened(self, sock):
        with self._lock:
            self.connections_opened += 1
            self._open.add(sock)

    def closed(self, sock):
        with self._lock:
            self._open.discard(sock)

    def stop(self):
        """Stop listening and cut the kept-alive connections too: the server is gone."""
        self.shutdown()
        self.server_close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "www"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "empty dir").mkdir()
    return root


@pytest.fixture
def serve(root):
    servers = []

    def start(**opts) -> _Server:
        servers.append(_Server(root, **opts))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def make_ufs(url: str, **kwargs) -> HttpUfs:
    return HttpUfs(parse_parameters({"source": url}), {}, **kwargs)


@pytest.fixture
def site(serve):
    server = serve()
    ufs = make_ufs(server.url + "/")
    yield ufs, server
    ufs.close()


def test_listing_nested_dirs_and_escaped_names(site, root):
    ufs, _ = site
    entries = ufs.list("")
    assert [e.name for e in entries] == sorted(
        ["a.txt", "big.bin", "empty dir", "empty.bin", "sub dir", "with space.txt", UNICODE, ODD]
    )
    by_name = {e.name: e for e in entries}
    assert by_name["sub dir"].kind is Kind.DIR and by_name["empty dir"].kind is Kind.DIR
    assert by_name[UNICODE].size == len(FILES[UNICODE])
    assert by_name[ODD].kind is Kind.FILE and by_name[ODD].size == len(FILES[ODD])
    assert [e.path for e in ufs.list("sub dir")] == ["sub dir/deeper", "sub dir/inner.txt"]
    assert [(e.path, e.kind) for e in ufs.list("/sub dir/deeper/")] == [
        ("sub dir/deeper/leaf.txt", Kind.FILE), ("sub dir/deeper/ß", Kind.DIR)]
    assert [e.path for e in ufs.list("sub dir/deeper/ß")] == ["sub dir/deeper/ß/x.bin"]
    assert ufs.list("empty dir") == []


def test_stat_sizes_versions_and_mtime(site, root):
    ufs, _ = site
    assert ufs.stat("").kind is Kind.DIR
    for rel, data in FILES.items():
        e = ufs.stat(rel)
        assert (e.kind, e.size, e.path) == (Kind.FILE, len(data), rel)
        assert e.version and '"' not in e.version
        assert e.mtime_ns == int(os.stat(root / rel).st_mtime) * 1_000_000_000
    assert ufs.stat("sub dir/deeper").kind is Kind.DIR
    assert ufs.stat("/sub dir/./deeper/leaf.txt").path == "sub dir/deeper/leaf.txt"
    assert ufs.read(ODD, 0, 100) == FILES[ODD]
    assert ufs.read("sub dir/deeper/ß/x.bin", 10, 5) == b"xxxxx"


def test_missing_paths_and_wrong_kinds(site):
    ufs, _ = site
    with pytest.raises(FileNotFoundError):
        ufs.stat("nope")
    with pytest.raises(FileNotFoundError):
        ufs.stat("sub dir/nope")
    with pytest.raises(FileNotFoundError):
        ufs.read("nope", 0, 10)
    with pytest.raises(FileNotFoundError):
        ufs.list("nope")
    with pytest.raises(NotADirectoryError):
        ufs.list("a.txt")
    with pytest.raises(NotADirectoryError):
        ufs.stat("a.txt/x")
    with pytest.raises(IsADirectoryError):
        ufs.read("", 0, 10)
    with pytest.raises(IsADirectoryError):
        ufs.read("sub dir", 0, 10)


def test_paths_never_leave_the_root(serve, root):
    (root / "sub dir" / "secret.txt").write_bytes(b"outside the dataset")
    server = serve()
    ufs = make_ufs(server.url + "/sub%20dir/deeper/")
    with pytest.raises(PermissionError):
        ufs.stat("../secret.txt")
    with pytest.raises(PermissionError):
        ufs.read("ß/../../secret.txt", 0, 100)
    with pytest.raises(FileNotFoundError):  # sent escaped, so the server sees no dot-dot
        ufs.read("%2e%2e/secret.txt", 0, 100)
    assert [e.name for e in ufs.list("")] == ["leaf.txt", "ß"]
    ufs.close()


def test_ranged_reads_match_the_source_bytes(site):
    ufs, server = site
    version = ufs.stat("big.bin").version
    block = 4 << 20
    assert ufs.read("big.bin", 0, block, version) == BIG[:block]
    assert ufs.read("big.bin", block, block, version) == BIG[block:]  # short at EOF
    rnd = random.Random(3)
    for _ in range(40):
        offset = rnd.randrange(len(BIG))
        length = rnd.randrange(1, 300_000)
        assert ufs.read("big.bin", offset, length, version) == BIG[offset:offset + length]
    gets = [h for method, path, h in server.log if method == "GET" and path == "/big.bin"]
    assert gets and all("Range" in h for h in gets)  # never the whole 5 MiB


def test_reads_at_and_after_the_end(site):
    ufs, _ = site
    size = len(BIG)
    version = ufs.stat("big.bin").version
    assert ufs.read("big.bin", size - 10, 100) == BIG[-10:]
    assert ufs.read("big.bin", size, 10) == b""
    assert ufs.read("big.bin", size + 4096, 10, version) == b""
    assert ufs.read("empty.bin", 0, 10) == b""
    assert ufs.read("a.txt", 3, 0) == b""
    with pytest.raises(ValueError):
        ufs.read("a.txt", -1, 3)


def test_a_server_that_caps_ranges_still_gives_whole_reads(serve):
    server = serve(max_range=256 << 10)
    ufs = make_ufs(server.url + "/")
    assert ufs.read("big.bin", 1000, 3 << 20) == BIG[1000:1000 + (3 << 20)]
    assert ufs.read("big.bin", len(BIG) - 1000, 3 << 20) == BIG[-1000:]
    ufs.close()


def test_single_file_url_is_a_dataset_of_one_file(serve):
    server = serve()
    ufs = make_ufs(server.url + "/big.bin")
    assert ufs.stat("").kind is Kind.DIR
    [entry] = ufs.list("")
    assert (entry.path, entry.kind, entry.size) == ("big.bin", Kind.FILE, len(BIG))
    assert ufs.stat("big.bin") == entry
    assert ufs.read("big.bin", 100, 1000, entry.version) == BIG[100:1100]
    with pytest.raises(FileNotFoundError):
        ufs.stat("a.txt")
    with pytest.raises(NotADirectoryError):
        ufs.list("big.bin")
    with pytest.raises(NotADirectoryError):
        ufs.stat("big.bin/x")
    ufs.close()
    ufs = make_ufs(f"{server.url}/{quote(UNICODE)}")
    assert [(e.name, e.size) for e in ufs.list("")] == [(UNICODE, len(FILES[UNICODE]))]
    assert ufs.read(UNICODE, 0, 100) == FILES[UNICODE]
    ufs.close()


def test_directory_url_without_slash_follows_the_redirect(serve):
    server = serve()
    ufs = open_ufs(parse_parameters({"source": server.url + "/sub%20dir"}), {})
    assert isinstance(ufs, HttpUfs)
    assert [e.name for e in ufs.list("")] == ["deeper", "inner.txt"]
    assert ufs.read("inner.txt", 0, 100) == b"inner"
    ufs.close()


def test_missing_source_and_error_statuses(serve):
    server = serve(status={"/a.txt": 403, "/with%20space.txt": 503})
    with pytest.raises(UfsUnavailable, match="404"):
        make_ufs(server.url + "/no/such/dir/")
    with pytest.raises(UfsUnavailable) as info:
        make_ufs(server.url + "/missing.bin?token=s3cr3t")
    assert "s3cr3t" not in str(info.value)
    ufs = make_ufs(server.url + "/")
    with pytest.raises(PermissionError, match="denied"):
        ufs.read("a.txt", 0, 1)
    with pytest.raises(UfsUnavailable) as info:
        ufs.stat("with space.txt")
    assert "503" in str(info.value) and server.url in str(info.value)
    ufs.close()


def test_server_down_is_unavailable_quickly(serve):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(UfsUnavailable, match=f"127.0.0.1:{port}.*cannot be reached"):
        make_ufs(f"http://127.0.0.1:{port}/data/")
    assert time.monotonic() - started < 3

    server = serve()
    ufs = make_ufs(server.url + "/")
    assert ufs.read("a.txt", 0, 5) == b"hello"
    server.stop()
    started = time.monotonic()
    with pytest.raises(UfsUnavailable):
        ufs.read("a.txt", 0, 5)
    with pytest.raises(UfsUnavailable):
        ufs.list("")
    assert time.monotonic() - started < 5
    ufs.close()


def _change(root, rel: str, data: bytes) -> None:
    path = root / rel
    old = os.stat(path).st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(old + 5_000_000_000, old + 5_000_000_000))


@pytest.mark.parametrize("opts", [
    {},
    {"if_match": False},  # the answer's ETag still tells
    {"weak_etag": True},  # If-Match never matches a weak ETag
    {"etag": False},  # size + Last-Modified
    {"ranges": False},  # whole bodies, sliced
], ids=["etag", "if-match-ignored", "weak-etag", "no-etag", "no-ranges"])
def test_a_changed_file_gets_a_new_version_and_old_reads_fail(serve, root, opts):
    server = serve(**opts)
    ufs = make_ufs(server.url + "/")
    old = ufs.stat("a.txt")
    assert ufs.read("a.txt", 6, 5, old.version) == b"world"
    assert ufs.read("a.txt", 6, 5, old.version) == b"world"  # unchanged: reads keep working
    _change(root, "a.txt", b"HELLO, brave new world\n")
    new = ufs.stat("a.txt")
    assert new.version != old.version and new.size == 23
    with pytest.raises(VersionChanged):
        ufs.read("a.txt", 6, 5, old.version)
    with pytest.raises(VersionChanged):
        ufs.read("a.txt", 15, 100, old.version)  # after the old end: changed, not EOF
    assert ufs.read("a.txt", 7, 5, new.version) == b"brave"
    ufs.close()


def test_a_server_that_ignores_range_serves_small_files_only(serve):
    server = serve(ranges=False)
    ufs = make_ufs(server.url + "/", max_unranged=1 << 20)
    assert ufs.read("a.txt", 6, 5) == b"world"
    assert ufs.read("a.txt", 6, 500) == b"world\n"
    assert ufs.read("a.txt", 500, 5) == b""
    with pytest.raises(UfsUnavailable, match="does not support range requests"):
        ufs.read("big.bin", 0, 4096)
    ufs.close()


def test_head_refused_falls_back_to_a_one_byte_get(serve):
    server = serve(no_head=True)
    ufs = make_ufs(server.url + "/")
    assert ufs.stat("big.bin").size == len(BIG)
    assert ufs.stat("empty.bin").size == 0
    assert {e.name: e.size for e in ufs.list("sub dir/deeper/ß")} == {"x.bin": 1000}
    single = make_ufs(server.url + "/a.txt")
    assert [(e.name, e.size) for e in single.list("")] == [("a.txt", len(FILES["a.txt"]))]
    assert single.read("a.txt", 0, 5) == b"hello"
    ufs.close()
    single.close()


def test_parallel_reads_share_a_bounded_pool_of_connections(site):
    ufs, server = site
    rnd = random.Random(5)
    ranges = [(rnd.randrange(len(BIG)), rnd.randrange(1, 200_000)) for _ in range(200)]
    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(lambda r: ufs.read("big.bin", r[0], r[1]), ranges))
    assert got == [BIG[o:o + n] for o, n in ranges]
    assert server.connections_opened <= 16  # kept alive and reused, never more than the pool


def test_index_children_of_nginx_and_apache_pages():
    nginx = """<html><head><title>Index of /data/</title></head><body><h1>Index of /data/</h1>
    <hr><pre><a href="../">../</a>
    <a href="images/">images/</a>                                  01-Jan-2024 10:00       -
    <a href="a%20b.txt">a b.txt</a>                                01-Jan-2024 10:00      12
    <a href="%C3%BC.bin">ü.bin</a>                                 01-Jan-2024 10:00       3
    <a href="x&amp;y.txt">x&amp;y.txt</a>                         01-Jan-2024 10:00       3
    </pre><hr></body></html>"""
    assert index_children(nginx, "http://h/data/") == {
        "images": Kind.DIR, "a b.txt": Kind.FILE, "ü.bin": Kind.FILE, "x&y.txt": Kind.FILE}
    apache = """<table><tr><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">
    Last modified</a></th></tr><tr><td><a href="/pub/">Parent Directory</a></td></tr>
    <tr><td><a href="docs/"><img src="/icons/folder.gif" alt="[DIR]"></a></td>
    <td><a href="docs/">docs/</a></td></tr>
    <tr><td><a href="/pub/data/abs.txt">abs.txt</a></td></tr>
    <tr><td><a href="http://other.example/pub/data/x">elsewhere</a></td></tr>
    <tr><td><a href="https://h/pub/data/other-scheme">tls</a></td></tr>
    <tr><td><a href="sub/deeper.txt">not a child</a></td></tr>
    <tr><td><a href="a%2Fb">slash</a> <a href="%FF">not utf-8</a> <a href="#top">top</a>
    </td></tr></table><address>Apache Server</address>"""
    assert index_children(apache, "http://h:80/pub/data/") == {
        "docs": Kind.DIR, "abs.txt": Kind.FILE}


# -- redirects: within the origin, unless the node allows more ---------------------------------

def test_a_redirect_to_another_origin_is_refused_naming_both(serve):
    target = serve()
    source = serve(redirect={"/": target.url + "/", "/a.txt": target.url + "/a.txt"})
    with pytest.raises(UfsUnavailable) as info:
        make_ufs(source.url + "/")
    message = str(info.value)
    assert f"redirect from {source.url}" in message and f"to {target.url}" in message
    assert "--http-redirect-allow" in message
    ufs = make_ufs(source.url + "/sub%20dir/")  # it opens; then its server redirects a file
    source.opts.redirect["/sub%20dir/inner.txt"] = target.url + "/a.txt"
    with pytest.raises(PermissionError, match=f"redirect from {source.url} to {target.url}"):
        ufs.read("inner.txt", 0, 5)
    ufs.close()
    assert target.log == []  # never asked anything


def test_a_redirect_within_the_origin_is_followed(serve):
    server = serve(redirect={"/old/": "/sub%20dir/", "/moved.txt": "/a.txt"})
    ufs = make_ufs(server.url + "/old/")
    assert [e.name for e in ufs.list("")] == ["deeper", "inner.txt"]
    assert ufs.read("inner.txt", 0, 100) == b"inner"
    ufs.close()
    ufs = make_ufs(server.url + "/moved.txt")
    assert ufs.read("moved.txt", 0, 100) == FILES["a.txt"]
    ufs.close()


def test_the_node_may_allow_other_origins(serve):
    target = serve()
    source = serve(redirect={"/": target.url + "/"})
    ufs = make_ufs(source.url + "/", redirects=RedirectPolicy.from_flags([target.url]))
    assert ufs.read("a.txt", 0, 100) == FILES["a.txt"]
    assert target.log
    ufs.close()
    # "*": any origin with public addresses; loopback must be named
    with pytest.raises(UfsUnavailable, match="address 127.0.0.1 is not public"):
        make_ufs(source.url + "/", redirects=RedirectPolicy.from_flags(["*"]))
    anywhere = RedirectPolicy.from_flags(["*"], lookup=lambda host: ["93.184.216.34"])
    ufs = make_ufs(source.url + "/", redirects=anywhere)
    assert ufs.read("a.txt", 0, 100) == FILES["a.txt"]
    ufs.close()


def test_redirect_loops_and_bad_allow_entries(serve):
    server = serve(redirect={"/a/": "/b/", "/b/": "/a/"})
    with pytest.raises(UfsUnavailable, match="more than 5 redirects"):
        make_ufs(server.url + "/a/")
    for bad in ("ftp://host", "https://host/path", "https://host?x=1", "host:80", "http://[x"):
        with pytest.raises(InvalidArgument, match="--http-redirect-allow"):
            RedirectPolicy.from_flags([bad])
    policy = RedirectPolicy.from_flags(["https://CDN.example.com", "http://h:8080/,*"])
    assert policy.flags() == ["http://h:8080", "https://cdn.example.com:443", "*"]
    assert RedirectPolicy.from_flags(policy.flags()) == policy
