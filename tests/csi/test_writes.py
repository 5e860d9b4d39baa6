"""Writer-mode volumes over a directory source: writes go straight through, reads come back
from the cache, read-only publishes and reader modes stay read-only (csi/fuse/writes.py).

The real `eddy serve` stages a local:// volume with a writer access mode; one pod's target is
published read-write, another read-only. Everything is checked through the mounts and directly
in the source directory.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from csi import validate
from tests.support import driver
from tests.support.driver import (
    AccessMode,
    create,
    errno_of,
    mounts_under,
    sha,
    stage_and_publish,
    teardown_volume,
)
from tests.support.fuse import fuse_problem
from tests.support.wait import wait_for

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(300),
              pytest.mark.skipif(fuse_problem() is not None, reason=str(fuse_problem()))]

MiB = 1 << 20
WRITER = AccessMode.SINGLE_NODE_MULTI_WRITER


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "old.txt").write_bytes(b"written before")
    return root


def _status(drv) -> dict:
    out = subprocess.run([sys.executable, "-m", "eddy.cli", "status", "--endpoint",
                          drv.engine_endpoint, "--json"], capture_output=True, text=True,
                         check=True).stdout
    [row] = json.loads(out)
    return row


@pytest.mark.parametrize(("mode", "source", "writable"), [
    (WRITER, "local:///srv/data", True),
    (AccessMode.SINGLE_NODE_WRITER, "nfs://nas/exports/ckpt", True),
    (AccessMode.MULTI_NODE_MULTI_WRITER, "s3://bucket/out", True),
    (WRITER, "https://mirror.example.com/data/", False),  # HTTP has no writes
    (AccessMode.MULTI_NODE_READER_ONLY, "local:///srv/data", False),
    (AccessMode.SINGLE_NODE_READER_ONLY, "s3://bucket/out", False),
])
def test_which_volumes_are_mounted_read_write(mode, source, writable):
    assert validate.writable(driver.mount_capability(mode), {"source": source}) is writable


def test_what_a_writer_writes_is_in_the_source_in_every_publish_and_in_the_cache(
        mem_driver, source, tmp_path):
    volume = create(mem_driver, "pvc-rw", {"source": f"local://{source}", "metadataTTL": "600"})
    staging, (rw, ro) = stage_and_publish(mem_driver, tmp_path, volume, mode=WRITER,
                                          writers=("pod-a",))
    data = os.urandom(8 * MiB + 123)
    os.mkdir(os.path.join(rw, "ckpt"), 0o750)
    with open(os.path.join(rw, "ckpt", "model.bin"), "wb") as f:
        for i in range(0, len(data), MiB):
            f.write(data[i:i + MiB])
        f.flush()
        os.fsync(f.fileno())
    assert (source / "ckpt" / "model.bin").read_bytes() == data  # straight through
    for mount in (rw, ro):
        with open(os.path.join(mount, "ckpt", "model.bin"), "rb") as f:
            assert sha(f.read()) == sha(data)
    # Write-through: the new file's blocks land in the cache without anybody reading them.
    wait_for(lambda: _status(mem_driver)["cached_bytes"] >= len(data), 30,
             "the written file to be cached")

    assert errno_of(open, os.path.join(ro, "new.txt"), "w") == errno.EROFS
    assert errno_of(os.mkdir, os.path.join(ro, "d")) == errno.EROFS

    with open(os.path.join(rw, "old.txt"), "ab") as f:  # an append to a file read before
        f.write(b" and after")
    with open(os.path.join(ro, "old.txt"), "rb") as f:
        assert f.read() == b"written before and after"
    os.truncate(os.path.join(rw, "old.txt"), 7)
    assert (source / "old.txt").read_bytes() == b"written"
    os.chmod(os.path.join(rw, "old.txt"), 0o600)
    assert stat.S_IMODE(os.stat(source / "old.txt").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(ro, "old.txt")).st_mode) == 0o600

    os.rename(os.path.join(rw, "ckpt"), os.path.join(rw, "final"))
    assert sorted(os.listdir(ro)) == ["final", "old.txt"]
    with open(os.path.join(ro, "final", "model.bin"), "rb") as f:
        assert sha(f.read()) == sha(data)
    os.symlink("final/model.bin", os.path.join(rw, "latest"))
    assert os.readlink(source / "latest") == "final/model.bin"
    with open(os.path.join(ro, "latest"), "rb") as f:
        assert f.read(5) == data[:5]

    # Refused, with the documented errno, and nothing left behind.
    assert errno_of(os.link, os.path.join(rw, "old.txt"), os.path.join(rw, "hard")) == \
        errno.EPERM
    assert errno_of(os.mkfifo, os.path.join(rw, "fifo")) == errno.EPERM
    assert errno_of(os.symlink, "../../etc/passwd", os.path.join(rw, "out")) == errno.EPERM
    assert sorted(os.listdir(source)) == ["final", "latest", "old.txt"]

    os.unlink(os.path.join(rw, "latest"))
    os.unlink(os.path.join(rw, "final", "model.bin"))
    os.rmdir(os.path.join(rw, "final"))
    assert sorted(os.listdir(ro)) == ["old.txt"] == sorted(os.listdir(source))
    teardown_volume(mem_driver, volume, staging, (rw, ro))
    assert mounts_under(str(tmp_path)) == []


def test_a_reader_mode_volume_stays_read_only(mem_driver, source, tmp_path):
    volume = create(mem_driver, "pvc-ro", {"source": f"local://{source}"})
    staging, (target,) = stage_and_publish(mem_driver, tmp_path, volume, targets=("pod-a",),
                                           writers=("pod-a",))  # rw publish, reader mode
    assert errno_of(open, os.path.join(target, "x"), "w") == errno.EROFS
    assert errno_of(open, os.path.join(target, "old.txt"), "r+b") == errno.EROFS
    assert os.listdir(source) == ["old.txt"]
    teardown_volume(mem_driver, volume, staging, (target,))


def test_concurrent_writers_of_different_files(mem_driver, source, tmp_path):
    volume = create(mem_driver, "pvc-many", {"source": f"local://{source}"})
    staging, (target,) = stage_and_publish(mem_driver, tmp_path, volume, mode=WRITER,
                                           targets=("pod-a",), writers=("pod-a",))
    blobs = {f"part-{i}.bin": os.urandom(3 * MiB + i) for i in range(6)}
    failures = []

    def write(name: str, data: bytes) -> None:
        try:
            with open(os.path.join(target, name), "wb") as f:
                for i in range(0, len(data), 256 << 10):
                    f.write(data[i:i + (256 << 10)])
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=write, args=item) for item in blobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    for name, data in blobs.items():
        assert sha((source / name).read_bytes()) == sha(data), name
        with open(os.path.join(target, name), "rb") as f:
            assert sha(f.read()) == sha(data), name
    teardown_volume(mem_driver, volume, staging, (target,))


def test_a_write_handle_survives_a_killed_mount_daemon(mem_driver, source, tmp_path):
    volume = create(mem_driver, "pvc-kill", {"source": f"local://{source}"})
    staging, (target,) = stage_and_publish(mem_driver, tmp_path, volume, mode=WRITER,
                                           targets=("pod-a",), writers=("pod-a",))
    first, second = os.urandom(3 * MiB), os.urandom(2 * MiB)
    with open(os.path.join(target, "log.bin"), "wb") as f:
        f.write(first)
        f.flush()
        [pid] = driver.daemon_pids(volume.volume_id)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: driver.daemon_pids(volume.volume_id) not in ([], [pid]), 30,
                 "a new mount daemon")
        f.write(second)  # the same open file, served by the successor
    assert sha((source / "log.bin").read_bytes()) == sha(first + second)
    teardown_volume(mem_driver, volume, staging, (target,))


def test_sequential_write_throughput_beside_a_direct_write(mem_driver, source, tmp_path):
    """A figure, not an assertion: 1 GiB written through the mount and straight to disk."""
    size = int(os.environ.get("EDDY_WRITE_MIB", "1024")) * MiB
    volume = create(mem_driver, "pvc-speed", {"source": f"local://{source}"})
    staging, (target,) = stage_and_publish(mem_driver, tmp_path, volume, mode=WRITER,
                                           targets=("pod-a",), writers=("pod-a",))
    chunk = os.urandom(MiB)

    def write(path: str) -> float:
        """MiB/s of writing and closing (the page cache takes it: the fsync is not timed)."""
        start = time.monotonic()
        with open(path, "wb") as f:
            for _ in range(size // MiB):
                f.write(chunk)
        took = time.monotonic() - start
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return size / MiB / took

    direct = write(str(source / "direct.bin"))
    mounted = write(os.path.join(target, "mounted.bin"))
    print(f"\nsequential write of {size // MiB} MiB: {mounted:.0f} MiB/s through the mount, "
          f"{direct:.0f} MiB/s straight to the source ({mounted / direct:.2f}x)")
    assert os.path.getsize(source / "mounted.bin") == size
    os.unlink(source / "direct.bin")
    os.unlink(source / "mounted.bin")
    teardown_volume(mem_driver, volume, staging, (target,))
