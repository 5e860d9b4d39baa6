"""What the node plugin may touch: only paths in kubelet's directory, only its own mounts."""

from __future__ import annotations

import os
import subprocess

import grpc
import pytest

from eddy.base.pb import csi_pb2
from tests.support.driver import (
    DriverProcess,
    cleanup_mounts,
    create,
    stage_and_publish,
    teardown_volume,
)
from tests.support.fuse import fuse_problem

pytestmark = pytest.mark.skipif(fuse_problem() is not None, reason=str(fuse_problem()))


def _volume(driver, tmp_path, name: str):
    src = tmp_path / f"src-{name}"
    src.mkdir()
    (src / "file").write_bytes(name.encode())
    return create(driver, name, {"source": f"local://{src}"})


def _unpublish(driver, volume_id: str, target: str) -> None:
    driver.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
        volume_id=volume_id, target_path=target))


def test_unpublish_never_removes_another_volumes_target(driver, tmp_path):
    a, b = _volume(driver, tmp_path, "pvc-a"), _volume(driver, tmp_path, "pvc-b")
    staging_a, [target_a] = stage_and_publish(driver, tmp_path, a, targets=("pod-a",))
    staging_b, [target_b] = stage_and_publish(driver, tmp_path, b, targets=("pod-b",))
    _unpublish(driver, a.volume_id, target_b)  # a CO bug, or a hostile caller
    with open(os.path.join(target_b, "file"), "rb") as f:
        assert f.read() == b"pvc-b"
    assert "target.not_this_volume" in driver.log()
    teardown_volume(driver, a, staging_a, [target_a])
    teardown_volume(driver, b, staging_b, [target_b])


def test_unpublish_leaves_a_mount_eddy_did_not_make(driver, tmp_path):
    target = tmp_path / "kubelet" / "pods" / "other" / "mount"
    target.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], check=True)
    (target / "theirs").write_bytes(b"not eddy's")
    _unpublish(driver, "pvc-unknown", str(target))
    assert (target / "theirs").read_bytes() == b"not eddy's"


def test_a_target_whose_record_was_lost_is_still_unmounted(driver, tmp_path):
    """The record of a published target is gone (moved aside as unreadable, say): a mount that
    is a view of the volume's own connection is still the volume's to remove."""
    volume = _volume(driver, tmp_path, "pvc-lost")
    staging, [target] = stage_and_publish(driver, tmp_path, volume, targets=("pod-a",))
    other = str(tmp_path / "kubelet" / "pods" / "pod-z" / "mount")
    os.makedirs(other)
    subprocess.run(["mount", "--bind", staging, other], check=True)  # not in any record
    _unpublish(driver, volume.volume_id, other)
    assert not os.path.exists(other)
    teardown_volume(driver, volume, staging, [target])


@pytest.mark.parametrize("field", ["staging_target_path", "target_path"])
def test_paths_outside_the_kubelet_directory_are_refused(driver, tmp_path, field):
    outside = "/var/tmp/eddy-not-kubelet"
    if field == "staging_target_path":
        call, req = driver.node.NodeStageVolume, csi_pb2.NodeStageVolumeRequest(
            volume_id="v1", staging_target_path=outside,
            volume_capability=csi_pb2.VolumeCapability(
                mount=csi_pb2.VolumeCapability.MountVolume(),
                access_mode=csi_pb2.VolumeCapability.AccessMode(mode=3)),
            volume_context={"source": f"local://{tmp_path}"})
    else:
        call, req = driver.node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(
            volume_id="v1", target_path=outside)
    with pytest.raises(grpc.RpcError) as e:
        call(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"not under the kubelet directory {driver.kubelet_dir}" in e.value.details()
    assert not os.path.exists(outside)


def test_a_symlink_in_kubelets_directory_cannot_lead_a_target_out(driver, tmp_path):
    pods = tmp_path / "kubelet" / "pods"
    pods.mkdir(parents=True)
    os.symlink("/etc", pods / "escape")
    with pytest.raises(grpc.RpcError) as e:
        _unpublish(driver, "v1", str(pods / "escape" / "mount"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_local_sources_only_from_the_directories_the_node_allows(tmp_path):
    allowed = tmp_path / "datasets"
    (allowed / "mine").mkdir(parents=True)
    (allowed / "mine" / "file").write_bytes(b"allowed")
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    drv = DriverProcess(str(tmp_path / "driver"), extra_args=("--local-allow", str(allowed)))
    try:
        with drv:
            inside = create(drv, "pvc-inside", {"source": f"local://{allowed}/mine"})
            staging, [target] = stage_and_publish(drv, tmp_path, inside, targets=("pod-a",))
            with open(os.path.join(target, "file"), "rb") as f:
                assert f.read() == b"allowed"
            teardown_volume(drv, inside, staging, [target])
            outside = create(drv, "pvc-outside", {"source": f"local://{elsewhere}"})
            with pytest.raises(grpc.RpcError) as e:
                stage_and_publish(drv, tmp_path, outside, targets=("pod-b",))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"--local-allow: {allowed}" in e.value.details()
    finally:
        cleanup_mounts(str(tmp_path))
