"""FUSE passthrough: opens of wholly cached files that the kernel reads from their extent.

The first tests drive `Passthrough` alone, with a fake table of backing files, and run with
any pyfuse3. The others mount `DatasetFs` for real and need a pyfuse3 built with the
passthrough patch. pyfuse3 holds one mount per process, so each of those tests starts this
module as a server process (`python -m tests.csi.fuse.test_passthrough MNT SRC CONTROL MODE`):
DatasetFs over a local source whose `extent` answers from CONTROL, a directory the test
changes. It writes the filesystem's statistics to CONTROL/statistics.json on SIGUSR1.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyfuse3
import pytest
import trio

from cache_engine.spec import parse_parameters
from cache_engine.ufs.local import LocalUfs
from csi.fuse import device
from csi.fuse.daemon import prefetch_wait
from csi.fuse.fs import DatasetFs
from csi.fuse.passthrough import Passthrough, pyfuse3_has_passthrough
from csi.mounts import is_mount_point
from eddy.base import log
from eddy.base.errors import Unavailable
from tests.support.fuse import fuse_problem

REPO = Path(__file__).resolve().parents[3]
BIG = 8 << 20
TIMEOUT = 15.0


def sha(data) -> str:
    return hashlib.sha256(data).hexdigest()


# -- Passthrough without a kernel -----------------------------------------------------------


class FakeBackingFiles:
    """The kernel's table of backing files: ids handed out and closed, or a refusal."""

    def __init__(self, error: int | None = None):
        self.error = error
        self.opened: list[int] = []
        self.closed: list[int] = []

    def open(self, fd: int) -> int:
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        self.opened.append(len(self.opened) + 1)
        return self.opened[-1]

    def close(self, backing_id: int) -> None:
        self.closed.append(backing_id)


class FakeExtents:
    """An engine's `extent`: the extent file while `cached`, else None; or it fails."""

    def __init__(self, path: Path, size: int):
        path.write_bytes(b"x" * size)
        self.path = path
        self.cached = True
        self.fail: Exception | None = None
        self.calls = 0

    def __call__(self, path: str, version: str, size: int, wait: float = 0.0) -> str | None:
        self.calls += 1
        time.sleep(0.05)  # long enough for a second open to arrive meanwhile
        if self.fail is not None:
            raise self.fail
        return str(self.path) if self.cached else None


def make(tmp_path, backing: FakeBackingFiles | None = None):
    """A Passthrough whose files all have one 10-byte extent."""
    extents = FakeExtents(tmp_path / "extent", 10)
    backing = backing or FakeBackingFiles()
    passthrough = Passthrough(extents, backing, trio.CapacityLimiter(2), log.get("test"))
    return passthrough, extents, backing


async def open_together(passthrough: Passthrough, inode: int, count: int) -> list[int]:
    ids: list[int] = []

    async def one():
        ids.append(await passthrough.open(inode, "f", "v1", 10))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return ids


def test_racing_opens_name_one_backing_id_closed_after_the_last_release(tmp_path):
    passthrough, extents, backing = make(tmp_path)

    async def go():
        ids = await open_together(passthrough, 7, 3)
        assert ids == [1, 1, 1] and extents.calls == 1
        passthrough.release(7)
        passthrough.release(7)
        assert backing.closed == []
        passthrough.release(7)
        assert backing.closed == [1]
        assert await passthrough.open(7, "f", "v1", 10) == 2  # a new id for the next open
        assert extents.calls == 2

    trio.run(go)


def test_an_inode_read_through_the_daemon_stays_so_until_its_last_release(tmp_path):
    passthrough, extents, backing = make(tmp_path)
    extents.cached = False

    async def go():
        assert await passthrough.open(7, "f", "v1", 10) == 0
        extents.cached = True
        assert await passthrough.open(7, "f", "v1", 10) == 0  # the inode's mode holds
        assert extents.calls == 1
        passthrough.release(7)
        passthrough.release(7)
        assert await passthrough.open(7, "f", "v1", 10) == 1
        assert await passthrough.open(8, "g", "", 10) == 0  # version-less: never
        assert extents.calls == 2

    trio.run(go)


@pytest.mark.parametrize(("fail", "size", "error", "tries_again"), [
    (Unavailable("engine unreachable"), 10, None, True),
    (OSError(errno.ECONNREFUSED, "refused"), 10, None, True),
    (None, 11, None, True),  # an extent of another size: the kernel would read past the end
    (None, 10, errno.ELOOP, True),  # this backing file stacks too deep; another may not
    (None, 10, errno.EPERM, False),  # the session has no passthrough: stop asking
    (None, 10, errno.ENOTTY, False),  # a kernel without the ioctl
])
def test_a_failure_opens_through_the_daemon(tmp_path, fail, size, error, tries_again):
    passthrough, extents, _ = make(tmp_path, FakeBackingFiles(error))
    extents.fail = fail

    async def go():
        for inode in (1, 2):
            assert await passthrough.open(inode, "f", "v1", size) == 0

    trio.run(go)
    assert extents.calls == (2 if tries_again else 1)


def test_opens_that_wait_for_a_prefetch_keep_out_of_the_metadata_threads(tmp_path):
    """An open waiting for its prefetch holds a worker thread for seconds: a slow model must
    not hold up every stat and listing of the mount."""
    backing = FakeBackingFiles()
    extent_file = FakeExtents(tmp_path / "extent", 10).path
    loaded = threading.Event()
    waits: list[float] = []

    def extent(path: str, version: str, size: int, wait: float = 0.0) -> str:
        waits.append(wait)
        if wait:
            loaded.wait(30)
        return str(extent_file)

    metadata = trio.CapacityLimiter(2)
    passthrough = Passthrough(extent, backing, metadata, log.get("test"))

    async def go():
        async with trio.open_nursery() as nursery:
            for inode in (1, 2, 3):  # more than the metadata threads
                nursery.start_soon(passthrough.open, inode, "m.safetensors", "v1", 10, 60.0)
            with trio.fail_after(10):
                while len(waits) < 3:
                    await trio.sleep(0.01)
                assert await passthrough.open(4, "config.json", "v1", 10) == 1  # not held up
            assert metadata.borrowed_tokens == 0
            loaded.set()

    trio.run(go)
    assert sorted(waits) == [0.0, 60.0, 60.0, 60.0]
    assert len(backing.opened) == 4


def test_an_open_waits_only_for_what_its_prefetch_covers_and_within_the_kernels_timeout():
    spec = parse_parameters({"source": "local:///data", "prefetch": "safetensors"})
    wait = prefetch_wait(spec, None)
    assert (wait("m/model-00001.SafeTensors"), wait("m/pytorch_model.bin")) == (60, 0)
    assert prefetch_wait(replace(spec, prefetch="whole"), None)("m/pytorch_model.bin") == 60
    assert prefetch_wait(replace(spec, prefetch="off"), None)("m/model.safetensors") == 0
    assert prefetch_wait(replace(spec, prefetch_wait=0), None)("m/model.safetensors") == 0
    # A request older than the kernel's timeout aborts the connection: the wait stays below.
    assert prefetch_wait(spec, 30)("m/model.safetensors") == 15


@pytest.mark.parametrize(("default", "most", "timeout"), [
    ("0", "0", None), ("30", "0", 30), ("0", "20", 20), ("30", "20", 20), ("10", "20", 10),
    (None, None, None),  # a kernel before 6.14 has neither
])
def test_the_kernels_request_timeout(tmp_path, default, most, timeout):
    for name, value in (("default_request_timeout", default), ("max_request_timeout", most)):
        if value is not None:
            (tmp_path / name).write_text(value + "\n")
    assert device.request_timeout(str(tmp_path)) == timeout


def test_passthrough_is_asked_for_only_when_pyfuse3_and_the_reader_can(tmp_path):
    class Reader(LocalUfs):
        def extent(self, path, version, size, wait=0.0):
            return None

    assert DatasetFs(Reader(str(tmp_path)), 60).enable_passthrough == pyfuse3_has_passthrough()
    assert not DatasetFs(Reader(str(tmp_path)), 60, passthrough=False).enable_passthrough
    assert not DatasetFs(LocalUfs(str(tmp_path)), 60).enable_passthrough


# -- The server process ----------------------------------------------------------------------


class ExtentReader(LocalUfs):
    """A local source whose `extent` answers from files in `control`, which the test changes.

    extents/NAME   NAME's extent (a copy of its bytes); without it NAME is not cached
    fail           while it exists, `extent` raises as when the engine is unreachable
    delay          seconds each `extent` call takes, so two opens can race
    calls          one line per `extent` call
    Files under `extent_min_size` bytes are never asked for, as with the engine's reader.
    """

    extent_min_size = 4096

    def __init__(self, root: str, control: str):
        super().__init__(root)
        self.control = Path(control)

    def extent(self, path: str, version: str, size: int, wait: float = 0.0) -> str | None:
        with open(self.control / "calls", "a") as f:
            f.write(f"{path}\n")
        delay = self.control / "delay"
        if delay.exists():
            time.sleep(float(delay.read_text()))
        if (self.control / "fail").exists():
            raise Unavailable("the engine does not answer")
        extent = self.control / "extents" / path
        return str(extent) if extent.exists() else None


async def _serve(fs: DatasetFs, statistics: Path) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_write_statistics, fs, statistics)
        await pyfuse3.main()  # returns when the test unmounts
        nursery.cancel_scope.cancel()


async def _write_statistics(fs: DatasetFs, path: Path) -> None:
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        print("READY", flush=True)  # only now may the test signal: SIGUSR1 would kill us
        async for _ in signals:
            part = path.with_suffix(".part")
            part.write_text(json.dumps(vars(fs.statistics())))
            os.replace(part, path)


def serve(mountpoint: str, source: str, control: str, mode: str) -> None:
    """Serve until unmounted. `mode` "off" turns passthrough off; "unasked" keeps it on but
    never asks the kernel for it at init, so every backing file is refused; "paged" keeps
    it on and opens files not cached whole through the page cache (`directIO: off`)."""
    log.configure("debug")
    fs = DatasetFs(ExtentReader(source, control), None, passthrough=mode != "off",
                   cold_direct_io=mode != "paged")
    if mode == "unasked":
        fs.enable_passthrough = False
    pyfuse3.init(fs, mountpoint, {"ro", "fsname=eddy-passthrough-test"})
    try:
        trio.run(_serve, fs, Path(control) / "statistics.json")
    finally:
        pyfuse3.close(unmount=False)


# -- DatasetFs mounted -----------------------------------------------------------------------


class Server:
    """One server process: its mount of `files`, and the control dir its reader answers from."""

    def __init__(self, tmp_path: Path, files: dict[str, bytes], mode: str = "on"):
        source, self.control, self.mountpoint = (tmp_path / n for n in ("src", "ctl", "mnt"))
        for d in (source, self.control / "extents", self.mountpoint):
            d.mkdir(parents=True)
        for name, data in files.items():
            (source / name).write_bytes(data)
        self.log_path = tmp_path / "server.log"
        with open(self.log_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.csi.fuse.test_passthrough", str(self.mountpoint),
                 str(source), str(self.control), mode],
                stdout=subprocess.PIPE, stderr=stderr, cwd=REPO)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()),
                         daemon=True).start()
        try:
            answer = lines.get(timeout=TIMEOUT)
        except queue.Empty:
            answer = b""
        assert answer == b"READY\n", self.log()

    def log(self) -> str:
        return self.log_path.read_text()

    def cache(self, name: str, data: bytes) -> Path:
        """Make `data` the extent of `name`: its next first open passes through."""
        extent = self.control / "extents" / name
        extent.write_bytes(data)
        return extent

    def extent_calls(self) -> int:
        calls = self.control / "calls"
        return len(calls.read_text().splitlines()) if calls.exists() else 0

    def statistics(self) -> dict:
        path = self.control / "statistics.json"
        path.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + TIMEOUT
        while not path.exists():
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.01)
        return json.loads(path.read_text())

    def closed(self) -> dict:
        """The statistics once the server saw every release: close() does not wait for it."""
        deadline = time.monotonic() + TIMEOUT
        while (stats := self.statistics())["open_files"]:
            assert time.monotonic() < deadline, stats
            time.sleep(0.01)
        return stats

    def stop(self) -> None:
        if is_mount_point(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], check=False)
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def server(tmp_path):
    """Start servers; skipped where FUSE or a pyfuse3 that can ask for passthrough is missing."""
    if fuse_problem() is not None:
        pytest.skip(fuse_problem())
    if not pyfuse3_has_passthrough():
        pytest.skip("this pyfuse3 cannot ask for passthrough (no get_session_fd): `make setup` "
                    "builds one that can (scripts/build-pyfuse3.sh)")
    servers: list[Server] = []

    def start(files: dict[str, bytes], mode: str = "on") -> Server:
        servers.append(Server(tmp_path / f"s{len(servers)}", files, mode))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def data() -> bytes:
    return random.Random(5).randbytes(BIG)


@pytest.mark.fuse
def test_the_kernel_reads_a_passthrough_open_itself(server, data):
    s = server({"big.bin": data})
    s.cache("big.bin", data)
    path = s.mountpoint / "big.bin"
    with open(path, "rb") as first, open(path, "rb") as second:  # the second reuses its id
        assert sha(first.read()) == sha(data)
        rng = random.Random(1)
        for _ in range(50):
            off, size = rng.randrange(BIG + 10), rng.choice([1, 4096, 1 << 20])
            assert os.pread(second.fileno(), size, off) == data[off:off + size]
    stats = s.closed()
    assert stats["passthrough_opens"] == 2 and s.extent_calls() == 1
    assert stats["reads"] == 0 and stats["errors"] == 0


@pytest.mark.fuse
def test_a_file_below_the_readers_extent_size_is_never_asked_for(server):
    small = os.urandom(4095)
    s = server({"small.bin": small})
    s.cache("small.bin", small)
    assert (s.mountpoint / "small.bin").read_bytes() == small
    stats = s.closed()
    assert s.extent_calls() == 0 and stats["passthrough_opens"] == 0 and stats["reads"] >= 1
    assert stats["direct_io_opens"] == 0  # a small file stays in the page cache


@pytest.mark.fuse
def test_a_file_not_cached_whole_is_read_around_the_page_cache(server, data):
    s = server({"big.bin": data})
    path = s.mountpoint / "big.bin"
    with open(path, "rb") as f, open(path, "rb") as second:  # both follow the first's mode
        assert sha(f.read()) == sha(data)
        before = s.statistics()["reads"]
        assert os.pread(f.fileno(), 1 << 20, 0) == data[:1 << 20]
        # The page cache kept none of it: the same bytes again are the daemon's to answer.
        assert s.statistics()["reads"] > before
        assert os.pread(second.fileno(), 4096, BIG - 100) == data[BIG - 100:]
    stats = s.closed()
    assert stats["direct_io_opens"] == 2 and stats["passthrough_opens"] == 0
    s.cache("big.bin", data)  # cached whole now: the next open passes through
    assert sha(path.read_bytes()) == sha(data)
    after = s.closed()
    assert after["passthrough_opens"] == 1 and after["direct_io_opens"] == 2


@pytest.mark.fuse
def test_a_file_read_around_the_page_cache_can_be_mapped(server, data):
    """As a model loader maps its weights: MAP_SHARED, which the kernel refuses on a
    direct_io open unless the daemon asked for FUSE_DIRECT_IO_ALLOW_MMAP at init."""
    s = server({"big.bin": data})
    with open(s.mountpoint / "big.bin", "rb") as f, \
            mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
        rng = random.Random(2)
        for _ in range(50):
            off = rng.randrange(BIG)
            assert m[off:off + 5000] == data[off:off + 5000]
        assert sha(m) == sha(data)
        assert os.pread(f.fileno(), 4096, 12345) == data[12345:12345 + 4096]
    stats = s.closed()
    assert stats["direct_io_opens"] == 1 and stats["reads"] > 0 and stats["errors"] == 0


@pytest.mark.fuse
def test_direct_io_turned_off_reads_through_the_page_cache(server, data):
    s = server({"big.bin": data}, mode="paged")
    path = s.mountpoint / "big.bin"
    with open(path, "rb") as f:
        assert sha(f.read()) == sha(data)
        before = s.statistics()["reads"]
        assert os.pread(f.fileno(), 1 << 20, 0) == data[:1 << 20]
        assert s.statistics()["reads"] == before  # the page cache answered
    assert s.closed()["direct_io_opens"] == 0


@pytest.mark.fuse
def test_racing_opens_share_one_backing_file(server, data):
    s = server({"big.bin": data})
    s.cache("big.bin", data)
    (s.control / "delay").write_text("0.5")
    path = s.mountpoint / "big.bin"
    barrier = threading.Barrier(2)
    files = []

    def open_it():
        barrier.wait()
        files.append(open(path, "rb"))  # noqa: SIM115 - closed below

    threads = [threading.Thread(target=open_it) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(files) == 2  # a second backing id would have failed one open with EIO
        assert s.extent_calls() == 1
        assert [sha(f.read()) for f in files] == [sha(data)] * 2
    finally:
        for f in files:
            f.close()
    assert s.closed()["passthrough_opens"] == 2
    (s.control / "delay").unlink()
    assert sha(path.read_bytes()) == sha(data)  # the inode's id was closed: a new one
    stats = s.closed()
    assert stats["passthrough_opens"] == 3 and s.extent_calls() == 2 and stats["reads"] == 0


@pytest.mark.fuse
def test_an_inode_read_through_the_daemon_stays_so_while_open(server, data):
    s = server({"big.bin": data})
    path = s.mountpoint / "big.bin"
    with open(path, "rb") as first:
        assert first.read(4096) == data[:4096]
        s.cache("big.bin", data)
        with open(path, "rb") as second:  # passed through, it would fail with EIO
            assert sha(second.read()) == sha(data)
    stats = s.closed()
    assert stats["passthrough_opens"] == 0 and stats["reads"] > 0 and s.extent_calls() == 1
    assert sha(path.read_bytes()) == sha(data)
    after = s.closed()
    assert after["passthrough_opens"] == 1 and after["reads"] == stats["reads"]


@pytest.mark.fuse
def test_an_extent_unlinked_while_open_still_reads_right(server, data):
    s = server({"big.bin": data})
    extent = s.cache("big.bin", data)
    with open(s.mountpoint / "big.bin", "rb") as f:
        extent.unlink()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")  # its bytes now come from disk
        assert sha(f.read()) == sha(data)
    assert s.closed()["passthrough_opens"] == 1


@pytest.mark.fuse
def test_mmap_of_a_passthrough_open(server, data):
    s = server({"big.bin": data})
    s.cache("big.bin", data)
    with open(s.mountpoint / "big.bin", "rb") as f, \
            mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert sha(m) == sha(data)
    stats = s.closed()
    assert stats["passthrough_opens"] == 1 and stats["reads"] == 0


@pytest.mark.fuse
def test_an_engine_that_does_not_answer_opens_through_the_daemon(server, data):
    s = server({"big.bin": data})
    s.cache("big.bin", data)
    (s.control / "fail").touch()
    path = s.mountpoint / "big.bin"
    assert sha(path.read_bytes()) == sha(data)
    stats = s.closed()
    assert stats["passthrough_opens"] == 0 and stats["reads"] > 0 and stats["errors"] == 0
    (s.control / "fail").unlink()
    assert sha(path.read_bytes()) == sha(data)  # it answers again: the next open passes
    assert s.closed()["passthrough_opens"] == 1


@pytest.mark.fuse
def test_passthrough_turned_off(server, data):
    s = server({"big.bin": data}, mode="off")
    s.cache("big.bin", data)
    assert sha((s.mountpoint / "big.bin").read_bytes()) == sha(data)
    stats = s.closed()
    assert stats["passthrough_opens"] == 0 and stats["reads"] > 0 and s.extent_calls() == 0


@pytest.mark.fuse
def test_a_session_the_kernel_refuses_stops_asking(server, data):
    files = {"big.bin": data, "other.bin": data[:1000]}
    s = server(files, mode="unasked")
    for name, content in files.items():
        s.cache(name, content)
    for name in ("big.bin", "other.bin", "big.bin"):
        assert sha((s.mountpoint / name).read_bytes()) == sha(files[name])
        s.closed()  # so each open is its inode's first, which would ask for an extent
    assert s.closed()["passthrough_opens"] == 0
    assert s.extent_calls() == 1  # the kernel said EPERM: no extent was asked for again
    assert s.log().count("passthrough open failed") == 1


if __name__ == "__main__":
    serve(*sys.argv[1:5])
