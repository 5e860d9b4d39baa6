"""Writer-mode volumes over S3 (SeaweedFS): staged on the node's disk, uploaded at close and
fsync, never silently lost (csi/fuse/writes.py, cache_engine/ufs/s3_writer.py).

The real `eddy serve` stages an s3:// volume with a writer access mode; what a pod writes is
read back through the mount, through a second publish and straight from the bucket. With the
S3 server stopped a close fails with EIO, the bytes stay staged, survive a killed mount daemon
and reach the bucket once the server is back; an unstage meanwhile fails and keeps them.
"""

from __future__ import annotations

import errno
import os
import signal

import grpc
import pytest

from eddy.base.pb import csi_pb2
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
from tests.support.s3server import S3Server, find_weed
from tests.support.wait import wait_for

pytestmark = [pytest.mark.fuse, pytest.mark.s3, pytest.mark.timeout(300),
              pytest.mark.skipif(fuse_problem() is not None, reason=str(fuse_problem()))]

MiB = 1 << 20
WRITER = AccessMode.SINGLE_NODE_MULTI_WRITER


def _params(server: S3Server, bucket: str) -> dict[str, str]:
    return {"source": f"s3://{bucket}/out", "endpoint": server.endpoint, "region": "us-east-1",
            "metadataTTL": "600"}


def _in_bucket(server: S3Server, bucket: str, path: str) -> bytes | None:
    return server.get(bucket, f"out/{path}")


def test_what_a_writer_writes_reaches_the_bucket_and_every_publish(mem_driver, tmp_path, s3_server,
                                                                   s3_bucket):
    s3_server.put(s3_bucket, "out/old.txt", b"written before")
    volume = create(mem_driver, "pvc-s3-rw", _params(s3_server, s3_bucket))
    staging, (rw, ro) = stage_and_publish(mem_driver, tmp_path, volume, secrets=s3_server.secrets,
                                          mode=WRITER, writers=("pod-a",))
    data = os.urandom(40 * MiB + 7)  # streamed in parts while it is written
    os.mkdir(os.path.join(rw, "ckpt"))
    with open(os.path.join(rw, "ckpt", "model.bin"), "wb") as f:
        for i in range(0, len(data), MiB):
            f.write(data[i:i + MiB])
    assert sha(_in_bucket(s3_server, s3_bucket, "ckpt/model.bin")) == sha(data)
    for mount in (rw, ro):
        with open(os.path.join(mount, "ckpt", "model.bin"), "rb") as f:
            assert sha(f.read()) == sha(data)
    with open(os.path.join(rw, "old.txt"), "ab") as f:  # a small object: downloaded, appended
        f.write(b" and after")
    assert _in_bucket(s3_server, s3_bucket, "old.txt") == b"written before and after"
    with open(os.path.join(ro, "old.txt"), "rb") as f:
        assert f.read() == b"written before and after"

    os.rename(os.path.join(rw, "old.txt"), os.path.join(rw, "new.txt"))  # copy + delete
    assert _in_bucket(s3_server, s3_bucket, "old.txt") is None
    assert sorted(os.listdir(ro)) == ["ckpt", "new.txt"]
    assert errno_of(os.rename, os.path.join(rw, "ckpt"), os.path.join(rw, "c2")) == errno.EXDEV
    assert errno_of(os.symlink, "new.txt", os.path.join(rw, "link")) == errno.EPERM
    assert errno_of(os.link, os.path.join(rw, "new.txt"), os.path.join(rw, "h")) == errno.EPERM
    assert errno_of(open, os.path.join(ro, "x"), "w") == errno.EROFS
    os.unlink(os.path.join(rw, "ckpt", "model.bin"))
    os.rmdir(os.path.join(rw, "ckpt"))
    assert sorted(os.listdir(rw)) == ["new.txt"]
    teardown_volume(mem_driver, volume, staging, (rw, ro))
    assert mounts_under(str(tmp_path)) == []


def test_a_file_open_for_writing_survives_a_killed_mount_daemon(mem_driver, tmp_path, s3_server,
                                                               s3_bucket):
    """The successor reopens the handle on the staged file its predecessor left (nothing was
    uploaded yet) and the pod writes on through the same descriptor."""
    volume = create(mem_driver, "pvc-s3-kill", _params(s3_server, s3_bucket))
    staging, (rw,) = stage_and_publish(mem_driver, tmp_path, volume, secrets=s3_server.secrets,
                                       targets=("pod-a",), mode=WRITER, writers=("pod-a",))
    first, second = os.urandom(3 * MiB), os.urandom(2 * MiB)
    with open(os.path.join(rw, "log.bin"), "wb") as f:
        f.write(first)
        f.flush()
        [pid] = driver.daemon_pids(volume.volume_id)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: driver.daemon_pids(volume.volume_id) not in ([], [pid]), 30,
                 "a new mount daemon")
        f.write(second)
    assert sha(_in_bucket(s3_server, s3_bucket, "log.bin")) == sha(first + second)
    teardown_volume(mem_driver, volume, staging, (rw,))


@pytest.mark.skipif(find_weed() is None, reason="the SeaweedFS `weed` binary is not installed")
def test_a_write_s3_refuses_is_eio_stays_staged_and_arrives_when_s3_is_back(mem_driver, tmp_path):
    with S3Server() as own:  # its own server: this test stops it
        own.create_bucket("ckpt")
        volume = create(mem_driver, "pvc-s3-down", _params(own, "ckpt"))
        staging, (rw,) = stage_and_publish(mem_driver, tmp_path, volume, secrets=own.secrets,
                                           targets=("pod-a",), mode=WRITER, writers=("pod-a",))
        data = os.urandom(3 * MiB)
        f = open(os.path.join(rw, "step-7.bin"), "wb")  # noqa: SIM115 - closed below
        own.halt()  # the server dies while the checkpoint is written
        f.write(data)
        with pytest.raises(OSError) as closing:
            f.close()
        assert closing.value.errno == errno.EIO

        # Nothing may be lost: not when the daemon dies, not when the volume is unstaged.
        [pid] = driver.daemon_pids(volume.volume_id)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: driver.daemon_pids(volume.volume_id) not in ([], [pid]), 30,
                 "a new mount daemon")
        mem_driver.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=volume.volume_id, target_path=rw))
        with pytest.raises(grpc.RpcError) as unstage:
            mem_driver.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
                volume_id=volume.volume_id, staging_target_path=staging))
        assert unstage.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "step-7.bin" in unstage.value.details()
        assert mounts_under(staging)  # the volume stays until S3 has the bytes

        own.start()
        wait_for(lambda: _in_bucket(own, "ckpt", "step-7.bin") == data, 60,
                 "the staged upload to reach the bucket")
        teardown_volume(mem_driver, volume, staging, ())
    assert mounts_under(str(tmp_path)) == []
