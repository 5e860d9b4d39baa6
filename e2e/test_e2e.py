"""End to end: the real driver process over its socket, real FUSE mounts, real sources.

Larger than the tests under tests/: a 2 GiB file read sequentially and at random offsets, 10k
small files, readers racing an unstage, an S3 volume shared by two pods. Bytes are checked
with hashes against the source.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
import threading

import grpc
import pytest

from eddy.base.pb import csi_pb2
from tests.support.driver import (
    DriverProcess,
    cleanup_mounts,
    create,
    daemon_pids,
    mounts_under,
    stage_and_publish,
    teardown_volume,
)

GI = 1 << 30
MI = 1 << 20


@pytest.fixture
def node(tmp_path):
    """A driver with a 1 GiB MEM tier on tmpfs in front of a 4 GiB disk tier."""
    mem = tempfile.mkdtemp(prefix="eddy-e2e-", dir="/dev/shm")
    drv = DriverProcess(str(tmp_path / "driver"), extra_args=(
        "--tier", f"MEM:{mem}:1Gi", "--tier", f"SSD:{tmp_path}/ssd:4Gi")).start()
    yield drv
    drv.stop()
    cleanup_mounts(str(tmp_path))
    shutil.rmtree(mem, ignore_errors=True)


def write_random(path, size: int, seed: int) -> str:
    """A file of `size` pseudo-random bytes; returns its sha256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 16 * MI))
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def sha_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MI):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.timeout(600)
def test_a_2gib_file_read_sequentially_and_at_random(node, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    big = src / "model.safetensors"
    want = write_random(big, 2 * GI, seed=1)
    volume = create(node, "pvc-big", {"source": f"local://{src}", "metadataTTL": "immutable"})
    staging, [target] = stage_and_publish(node, tmp_path, volume, targets=("pod-a",))
    through = os.path.join(target, "model.safetensors")
    assert sha_of(through) == want  # cold, sequential: from the source into the tiers
    rng = random.Random(2)
    with open(big, "rb") as a, open(through, "rb") as b:
        for _ in range(300):  # random ranges, across block boundaries too
            offset = rng.randrange(0, 2 * GI)
            length = rng.choice((1, 4095, 64 * 1024, MI + 17, 5 * MI))
            a.seek(offset)
            b.seek(offset)
            assert b.read(length) == a.read(length), (offset, length)
    assert sha_of(through) == want  # warm
    teardown_volume(node, volume, staging, [target])


@pytest.mark.timeout(600)
def test_ten_thousand_small_files(node, tmp_path):
    src = tmp_path / "src"
    rng = random.Random(3)
    want = {}
    for i in range(10_000):
        rel = f"shard-{i % 50:02d}/sub-{i % 7}/item-{i:05d}.bin"
        data = rng.randbytes(rng.randrange(0, 8192))
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        want[rel] = hashlib.sha256(data).hexdigest()
    volume = create(node, "pvc-small", {"source": f"local://{src}", "metadataTTL": "immutable"})
    staging, [target] = stage_and_publish(node, tmp_path, volume, targets=("pod-a",))
    for _ in range(2):  # cold, then warm
        got = {}
        for dirpath, _, names in os.walk(target):  # find + cat
            for name in names:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    got[os.path.relpath(path, target)] = hashlib.sha256(f.read()).hexdigest()
        assert got == want
    teardown_volume(node, volume, staging, [target])


def test_unstaging_under_an_active_reader_never_hangs(node, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_random(src / "data.bin", 64 * MI, seed=4)
    volume = create(node, "pvc-busy", {"source": f"local://{src}"})
    staging, targets = stage_and_publish(node, tmp_path, volume, targets=("pod-a",))
    stop = threading.Event()
    outcome: list[str] = []
    reads = [0]

    def reader() -> None:  # a pod that keeps reading through the staging mount itself
        try:
            with open(os.path.join(staging, "data.bin"), "rb") as f:
                while not stop.is_set():
                    if not f.read(MI):
                        f.seek(0)
                    reads[0] += 1
            outcome.append("stopped")
        except OSError as e:
            outcome.append(f"error {e.errno}")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    with pytest.raises(grpc.RpcError) as err:  # still published: refused, nothing changes
        node.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=staging), timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    teardown_volume(node, volume, staging, targets)  # unpublish + unstage while reading
    # Not hung: the reader either got an error (the connection ended) or still completes
    # reads (pages the kernel kept, until their attributes expire); it never waits in one.
    for _ in range(3):
        before = reads[0]
        thread.join(1.0)
        assert not thread.is_alive() or reads[0] > before, "the reader hung on the mount"
    stop.set()
    thread.join(10)
    assert not thread.is_alive(), "the reader hung on the unstaged mount"
    assert outcome and (outcome[0] == "stopped" or outcome[0].startswith("error"))
    assert mounts_under(str(tmp_path)) == []
    assert daemon_pids(volume.volume_id) == []


@pytest.mark.s3
def test_two_pods_share_one_staged_s3_volume(tmp_path, s3_server, s3_bucket):
    data = random.Random(5).randbytes(48 * MI + 123)
    s3_server.put(s3_bucket, "ds/weights.bin", data)
    s3_server.put(s3_bucket, "ds/config.json", b'{"layers": 2}')
    want = hashlib.sha256(data).hexdigest()
    with DriverProcess(str(tmp_path / "driver"),
                       extra_args=("--tier", f"SSD:{tmp_path}/ssd:256Mi")) as drv:
        try:
            volume = create(drv, "pvc-s3", {"source": f"s3://{s3_bucket}/ds",
                                            "endpoint": s3_server.endpoint})
            staging, targets = stage_and_publish(drv, tmp_path, volume,
                                                 secrets=s3_server.secrets)
            results: dict[str, str] = {}
            threads = [threading.Thread(target=lambda t=t: results.__setitem__(
                t, sha_of(os.path.join(t, "weights.bin")))) for t in targets]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert results == {t: want for t in targets}  # both pods, one staged mount
            assert len(daemon_pids(volume.volume_id)) == 1
            teardown_volume(drv, volume, staging, targets)
        finally:
            cleanup_mounts(str(tmp_path))
