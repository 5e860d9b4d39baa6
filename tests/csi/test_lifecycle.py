"""A volume's whole life as kubelet and the external-provisioner drive it, over the real socket.

CreateVolume -> NodeStageVolume -> NodePublishVolume (two pods) -> read through the targets ->
NodeUnpublishVolume -> NodeUnstageVolume -> DeleteVolume, against a local directory and a real
S3 server; then the failures a node sees: a mount daemon killed, the plugin itself killed.
"""

from __future__ import annotations

import errno
import os
import signal

import grpc
import pytest

from csi import mounts
from eddy.base.pb import csi_pb2
from tests.support.driver import (
    AccessMode,
    DriverProcess,
    cleanup_mounts,
    create,
    daemon_pids,
    mount_capability,
    mounts_under,
    sha,
    stage_and_publish,
    teardown_volume,
)
from tests.support.fuse import run_as
from tests.support.wait import wait_for

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


def assert_tree(mount_dir: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        with open(os.path.join(mount_dir, rel), "rb") as f:
            assert sha(f.read()) == sha(data), rel
    assert os.readlink(os.path.join(mount_dir, "config-link.json")) == "config.json"
    assert sorted(os.listdir(mount_dir)) == sorted(
        ["model.safetensors", "config.json", "tokenizer", "shards", "config-link.json"])


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


def test_killed_mount_daemon_is_replaced_on_the_same_mount(driver, tmp_path):
    """With the mounter in the plugin's process (`eddy serve` alone), a killed daemon's
    successor resumes the same connection: a file open across the kill reads on, and the
    targets are never mounted again."""
    src = tmp_path / "dataset"
    files = make_tree(src)
    volume = create(driver, "pvc-restart", {"source": f"local://{src}"})
    staging, targets = stage_and_publish(driver, tmp_path, volume)
    device = mounts.find_mount(targets[0]).device
    [pid] = daemon_pids(volume.volume_id)
    with open(os.path.join(targets[0], "model.safetensors"), "rb") as held:
        head = held.read(1 << 20)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: daemon_pids(volume.volume_id) not in ([], [pid]),
                 what="a new mount daemon")
        assert sha(head + held.read()) == sha(files["model.safetensors"])
    for target in targets:
        assert_tree(target, files)
        assert mounts.find_mount(target).device == device
    stats = driver.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
        volume_id=volume.volume_id, volume_path=staging))
    assert not stats.volume_condition.abnormal
    assert "restarted 1 times" in stats.volume_condition.message
    teardown_volume(driver, volume, staging, targets)
    assert mounts_under(str(tmp_path)) == []


def test_a_staged_volume_keeps_the_source_modes_across_a_daemon_restart(driver, tmp_path):
    """The mounter's own mount(2) of /dev/fuse enforces modes too, and a successor daemon
    answers for a file its predecessor looked up with the mode the journal kept."""
    src = tmp_path / "dataset"
    src.mkdir(mode=0o755)
    for name, mode, owner in (("private", 0o600, 0), ("public", 0o644, 0), ("users", 0o640, 1000)):
        (src / name).write_bytes(name.encode())
        os.chown(src / name, owner, owner)
        (src / name).chmod(mode)
    volume = create(driver, "pvc-modes", {"source": f"local://{src}", "metadataTTL": "0"})
    staging, targets = stage_and_publish(driver, tmp_path, volume, targets=("pod-a",))
    nobody = 65534

    def check(target: str) -> None:
        denied = run_as(nobody, nobody, ["cat", "private"], cwd=target)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert run_as(nobody, nobody, ["cat", "public"], cwd=target).stdout == "public"
        assert run_as(1000, 1000, ["cat", "users"], cwd=target).stdout == "users"
        shown = os.stat(os.path.join(target, "users"))
        assert (shown.st_mode & 0o7777, shown.st_uid, shown.st_gid) == (0o640, 1000, 1000)

    check(targets[0])
    held = os.open(os.path.join(targets[0], "private"), os.O_RDONLY)
    try:
        [pid] = daemon_pids(volume.volume_id)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: daemon_pids(volume.volume_id) not in ([], [pid]),
                 what="a new mount daemon")
        st = os.fstat(held)  # metadataTTL 0: the kernel asks the successor, which replayed it
        assert (st.st_mode & 0o7777, st.st_uid) == (0o600, 0)
    finally:
        os.close(held)
    check(targets[0])
    teardown_volume(driver, volume, staging, targets)


def test_plugin_restart_adopts_running_daemons(tmp_path):
    """A new plugin takes over the running daemon and a copy of its descriptor: a daemon
    that dies afterwards is still resumed on the same mount."""
    src = tmp_path / "dataset"
    files = make_tree(src)
    workdir = str(tmp_path / "driver")
    drv = DriverProcess(workdir).start()
    try:
        volume = create(drv, "pvc-adopt", {"source": f"local://{src}"})
        staging, targets = stage_and_publish(drv, tmp_path, volume, targets=("pod-a",))
        device = mounts.find_mount(targets[0]).device
        [pid] = daemon_pids(volume.volume_id)
        drv.kill(signal.SIGKILL)
        assert_tree(targets[0], files)  # pods keep reading while the plugin is down
        drv = DriverProcess(workdir).start()
        assert daemon_pids(volume.volume_id) == [pid]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: daemon_pids(volume.volume_id) not in ([], [pid]),
                 what="a new mount daemon")
        assert_tree(targets[0], files)
        assert mounts.find_mount(targets[0]).device == device
        teardown_volume(drv, volume, staging, targets)
        assert daemon_pids(volume.volume_id) == []
        assert mounts_under(str(tmp_path)) == []
    finally:
        drv.stop()
        cleanup_mounts(str(tmp_path))


def test_a_connection_nobody_held_is_mounted_anew_and_targets_bound_again(tmp_path):
    """The daemon died while the plugin was down too, so no process held the connection and
    the kernel ended it: the restarted plugin mounts the volume anew and binds its targets
    again (new pods read it; a running pod's copy of the old mount is gone)."""
    src = tmp_path / "dataset"
    files = make_tree(src)
    workdir = str(tmp_path / "driver")
    drv = DriverProcess(workdir).start()
    try:
        volume = create(drv, "pvc-lost", {"source": f"local://{src}"})
        staging, targets = stage_and_publish(drv, tmp_path, volume, targets=("pod-a",))
        device = mounts.find_mount(targets[0]).device
        drv.kill(signal.SIGKILL)
        [pid] = daemon_pids(volume.volume_id)
        os.kill(pid, signal.SIGKILL)
        drv = DriverProcess(workdir).start()
        wait_for(lambda: mounts.find_mount(targets[0]).device != device,
                 what="the target bound to a new mount")
        assert_tree(targets[0], files)
        assert [m for m in mounts_under(str(tmp_path))].count(targets[0]) == 1
        teardown_volume(drv, volume, staging, targets)
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
