"""A volume's whole life as kubelet and the external-provisioner drive it, over the real socket.

CreateVolume -> NodeStageVolume -> NodePublishVolume (two pods) -> read through the targets ->
NodeUnpublishVolume -> NodeUnstageVolume -> DeleteVolume, against a local directory and a real
S3 server; then the failures a node sees: a mount daemon killed, the plugin itself killed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import time

import grpc
import pytest

from eddy.pb import csi_pb2
from tests.support.driver import (
    AccessMode,
    DriverProcess,
    cleanup_mounts,
    daemon_pids,
    mount_capability,
    mounts_under,
)

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs /dev/fuse and root for real FUSE and bind mounts")


def make_tree(root) -> dict[str, bytes]:
    files = {
        "model.safetensors": os.urandom(9 << 20),
        "config.json": b'{"hidden": 4096}\n',
        "tokenizer/vocab.txt": b"\n".join(b"tok%d" % i for i in range(5000)),
        "tokenizer/empty": b"",
        "shards/a/b/c/deep.bin": os.urandom(300_001),
    }
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    os.symlink("config.json", os.path.join(root, "config-link.json"))
    return files


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_tree(mount_dir: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        with open(os.path.join(mount_dir, rel), "rb") as f:
            assert sha(f.read()) == sha(data), rel
    assert os.readlink(os.path.join(mount_dir, "config-link.json")) == "config.json"
    assert sorted(os.listdir(mount_dir)) == sorted(
        ["model.safetensors", "config.json", "tokenizer", "shards", "config-link.json"])


@pytest.fixture
def driver(tmp_path):
    drv = DriverProcess(str(tmp_path / "driver")).start()
    yield drv
    drv.stop()
    cleanup_mounts(str(tmp_path))


def stage_and_publish(driver, tmp_path, volume, secrets=None, targets=("pod-a", "pod-b")):
    staging = str(tmp_path / "kubelet" / "staging" / volume.volume_id)
    req = csi_pb2.NodeStageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=staging,
        volume_capability=mount_capability(), volume_context=volume.volume_context,
        secrets=secrets or {})
    driver.node.NodeStageVolume(req)
    driver.node.NodeStageVolume(req)  # idempotent
    paths = []
    for pod in targets:
        target = str(tmp_path / "kubelet" / "pods" / pod / "mount")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        preq = csi_pb2.NodePublishVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=staging, target_path=target,
            volume_capability=mount_capability(), readonly=True,
            volume_context=volume.volume_context)
        driver.node.NodePublishVolume(preq)
        driver.node.NodePublishVolume(preq)  # idempotent
        paths.append(target)
    return staging, paths


def teardown_volume(driver, volume, staging, targets) -> None:
    for target in targets:
        req = csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume.volume_id, target_path=target)
        driver.node.NodeUnpublishVolume(req)
        driver.node.NodeUnpublishVolume(req)  # already undone: still OK
        assert not os.path.exists(target)
    req = csi_pb2.NodeUnstageVolumeRequest(volume_id=volume.volume_id,
                                           staging_target_path=staging)
    driver.node.NodeUnstageVolume(req)
    driver.node.NodeUnstageVolume(req)
    dreq = csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id)
    driver.controller.DeleteVolume(dreq)
    driver.controller.DeleteVolume(dreq)


def create(driver, name, parameters):
    return driver.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=name, volume_capabilities=[mount_capability()], parameters=parameters,
        capacity_range=csi_pb2.CapacityRange(required_bytes=1 << 30))).volume


def test_local_volume_whole_life(driver, tmp_path):
    src = tmp_path / "dataset"
    files = make_tree(src)
    volume = create(driver, "pvc-local", {
        "source": f"local://{src}", "metadataTTL": "immutable",
        "csi.storage.k8s.io/pvc/name": "models", "csi.storage.k8s.io/pvc/namespace": "ml"})
    assert volume.capacity_bytes == 1 << 30
    assert "csi.storage.k8s.io/pvc/name" not in volume.volume_context
    staging, targets = stage_and_publish(driver, tmp_path, volume)

    for target in targets:
        assert_tree(target, files)
    with pytest.raises(OSError) as err:
        os.open(os.path.join(targets[0], "new-file"), os.O_WRONLY | os.O_CREAT)
    assert err.value.errno in (errno.EROFS, errno.EACCES)

    stats = driver.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
        volume_id=volume.volume_id, volume_path=targets[0]))
    assert not stats.volume_condition.abnormal

    teardown_volume(driver, volume, staging, targets)
    assert mounts_under(str(tmp_path)) == []
    assert daemon_pids(volume.volume_id) == []
    assert sha((src / "model.safetensors").read_bytes()) == sha(files["model.safetensors"])


@pytest.mark.s3
def test_s3_volume_whole_life(driver, tmp_path, s3_server, s3_bucket):
    files = {"weights/model.safetensors": os.urandom(6 << 20), "weights/config.json": b"{}",
             "readme.md": b"# a dataset\n"}
    for key, data in files.items():
        s3_server.put(s3_bucket, f"models/llama/{key}", data)
    volume = create(driver, "pvc-s3", {
        "source": f"s3://{s3_bucket}/models/llama", "endpoint": s3_server.endpoint,
        "region": "us-east-1"})
    staging, targets = stage_and_publish(driver, tmp_path, volume, secrets=s3_server.secrets,
                                         targets=("pod-a",))
    for rel, data in files.items():
        with open(os.path.join(targets[0], rel), "rb") as f:
            assert sha(f.read()) == sha(data), rel
    assert sorted(os.listdir(targets[0])) == ["readme.md", "weights"]
    secret = s3_server.secrets["secretAccessKey"]
    assert secret not in driver.log()
    teardown_volume(driver, volume, staging, targets)
    assert mounts_under(str(tmp_path)) == []


@pytest.mark.s3
def test_s3_wrong_credentials_fail_staging_cleanly(driver, tmp_path, s3_server, s3_bucket):
    s3_server.put(s3_bucket, "data/file", b"x")
    volume = create(driver, "pvc-bad-secret", {
        "source": f"s3://{s3_bucket}/data", "endpoint": s3_server.endpoint})
    staging = str(tmp_path / "staging-bad")
    with pytest.raises(grpc.RpcError) as err:
        driver.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=staging,
            volume_capability=mount_capability(), volume_context=volume.volume_context,
            secrets={"accessKeyId": s3_server.secrets["accessKeyId"],
                     "secretAccessKey": "not-the-secret"}))
    assert err.value.code() != grpc.StatusCode.OK
    assert "not-the-secret" not in err.value.details()
    assert "not-the-secret" not in driver.log()
    assert mounts_under(str(tmp_path)) == []
    assert daemon_pids(volume.volume_id) == []


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_mount_daemon_is_restarted_and_targets_rebound(driver, tmp_path):
    src = tmp_path / "dataset"
    files = make_tree(src)
    volume = create(driver, "pvc-restart", {"source": f"local://{src}"})
    staging, targets = stage_and_publish(driver, tmp_path, volume)
    [pid] = daemon_pids(volume.volume_id)
    os.kill(pid, signal.SIGKILL)

    def serving_again():
        pids = daemon_pids(volume.volume_id)
        return pids and pids != [pid] and os.path.exists(os.path.join(targets[1], "config.json"))

    wait_for(serving_again, what="a new mount daemon behind the targets")
    for target in targets:
        assert_tree(target, files)
    stats = driver.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
        volume_id=volume.volume_id, volume_path=staging))
    assert not stats.volume_condition.abnormal
    teardown_volume(driver, volume, staging, targets)
    assert mounts_under(str(tmp_path)) == []


def test_plugin_restart_adopts_running_daemons(tmp_path):
    src = tmp_path / "dataset"
    files = make_tree(src)
    workdir = str(tmp_path / "driver")
    drv = DriverProcess(workdir).start()
    try:
        volume = create(drv, "pvc-adopt", {"source": f"local://{src}"})
        staging, targets = stage_and_publish(drv, tmp_path, volume, targets=("pod-a",))
        [pid] = daemon_pids(volume.volume_id)
        drv.kill(signal.SIGKILL)
        assert_tree(targets[0], files)  # pods keep reading while the plugin is down
        drv = DriverProcess(workdir).start()
        assert daemon_pids(volume.volume_id) == [pid]
        teardown_volume(drv, volume, staging, targets)
        assert daemon_pids(volume.volume_id) == []
        assert mounts_under(str(tmp_path)) == []
    finally:
        drv.stop()
        cleanup_mounts(str(tmp_path))


def test_unstage_while_published_is_refused(driver, tmp_path):
    src = tmp_path / "dataset"
    make_tree(src)
    volume = create(driver, "pvc-busy", {"source": f"local://{src}"})
    staging, targets = stage_and_publish(driver, tmp_path, volume, targets=("pod-a",))
    with pytest.raises(grpc.RpcError) as err:
        driver.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=staging))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert targets[0] in err.value.details()
    assert os.path.exists(os.path.join(targets[0], "config.json"))
    teardown_volume(driver, volume, staging, targets)


def test_publish_read_write_mode_is_accepted(driver, tmp_path):
    src = tmp_path / "dataset"
    make_tree(src)
    volume = create(driver, "pvc-rw", {"source": f"local://{src}"})
    staging = str(tmp_path / "staging-rw")
    cap = mount_capability(AccessMode.SINGLE_NODE_WRITER)
    driver.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=staging, volume_capability=cap,
        volume_context=volume.volume_context))
    target = str(tmp_path / "pod-rw")
    driver.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=staging, target_path=target,
        volume_capability=cap))
    assert os.path.exists(os.path.join(target, "config.json"))
    teardown_volume(driver, volume, staging, [target])
