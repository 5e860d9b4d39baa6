"""nfs:// sources on the node: one read-only mount per export under the state dir, shared by
the volumes that read it, mounted again after a plugin restart, removed with the last volume.

No NFS server can run here, so `mount -t nfs` is replaced by a bind mount of a local directory
(a real mount the node sees in its mount table); everything else is the real NodeService.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from cache_engine.spec import parse_parameters
from csi import mounts
from csi.nfs import NfsMounts
from csi.node import NodeService
from eddy.base.pb import csi_pb2
from tests.support.driver import cleanup_mounts, mount_capability
from tests.support.fake_daemons import FakeMounter
from tests.support.wait import wait_for

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


def test_nfs_sources_become_local_directories_named_after_the_export(tmp_path):
    nfs = NfsMounts(str(tmp_path))
    for uri, export in (("nfs://nas.example.com/exports/models", "nas.example.com:/exports/models"),
                        ("nfs://[fd00::5]/srv/a b", "[fd00::5]:/srv/a b")):
        spec = nfs.local_spec(parse_parameters({"source": uri}))
        assert spec.source.scheme == "local"
        assert spec.source.root.startswith(f"{tmp_path}/nfs/")
        assert nfs.export_of(spec.to_parameters()) == (export, spec.source.root)
    other = parse_parameters({"source": "local:///srv"})
    assert nfs.local_spec(other) is other and nfs.export_of(other.to_parameters()) is None


class FakeNfs:
    """Bind-mounts `exports/<path>` instead of talking NFS; counts mounts."""

    def __init__(self, root):
        self.root = root
        self.mounted: list[str] = []

    def __call__(self, export: str, mountpoint: str) -> None:
        server, _, path = export.partition(":")
        source = self.root / server / path.lstrip("/")
        source.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", "-o", "ro", str(source), mountpoint], check=True)
        self.mounted.append(export)


@pytest.fixture
def node(tmp_path):
    fake_nfs, fake_daemons = FakeNfs(tmp_path / "exports"), FakeMounter()
    service = NodeService("n1", str(tmp_path / "state"), mounter=fake_daemons,
                          kubelet_dir=str(tmp_path),
                          nfs=NfsMounts(str(tmp_path / "state"), mount=fake_nfs))
    yield service, fake_nfs, fake_daemons
    service.close()
    cleanup_mounts(str(tmp_path))


def stage(service, volume_id, tmp_path, source="nfs://nas/exports/models"):
    service.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=volume_id, staging_target_path=str(tmp_path / "staging" / volume_id),
        volume_capability=mount_capability(), volume_context={"source": source}))


def unstage(service, volume_id, tmp_path):
    service.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
        volume_id=volume_id, staging_target_path=str(tmp_path / "staging" / volume_id)))


@needs_root
def test_one_mount_per_export_shared_and_removed_with_the_last_volume(node, tmp_path):
    service, fake_nfs, fake_daemons = node
    stage(service, "v1", tmp_path)
    stage(service, "v2", tmp_path)
    assert fake_nfs.mounted == ["nas:/exports/models"]
    [local] = set(fake_daemons.sources)
    assert local.startswith(f"local://{tmp_path}/state/nfs/nas/")
    mountpoint = local[len("local://"):]
    assert mounts.find_mount(mountpoint).read_only
    unstage(service, "v1", tmp_path)
    assert mounts.is_mount_point(mountpoint)  # v2 still reads it
    unstage(service, "v2", tmp_path)
    assert not mounts.is_mount_point(mountpoint) and not os.path.exists(mountpoint)


@needs_root
def test_a_restarted_plugin_mounts_the_export_again_before_the_daemon(node, tmp_path):
    service, fake_nfs, fake_daemons = node
    stage(service, "v1", tmp_path)
    mountpoint = fake_daemons.sources[0][len("local://"):]
    mounts.unmount_all(mountpoint)  # what a new plugin container finds
    fake_daemons.mounts.clear()  # a mounter that lost its records: the volume is staged again
    restarted = NodeService("n1", str(tmp_path / "state"), mounter=fake_daemons,
                            kubelet_dir=str(tmp_path),
                            nfs=NfsMounts(str(tmp_path / "state"), mount=fake_nfs))
    restarted.start()
    try:
        assert mounts.is_mount_point(mountpoint)
        assert fake_nfs.mounted == ["nas:/exports/models"] * 2
        wait_for(lambda: len(fake_daemons.sources) == 2, what="the volume staged again")
        assert fake_daemons.sources == [fake_daemons.sources[0]] * 2
    finally:
        restarted.close()
