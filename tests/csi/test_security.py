"""A node shared by teams: what one volume's author can reach through eddy, and what cannot.

Through the real driver and real mounts: a local:// source reached through a symlink is
refused; links and special files inside a dataset never lead eddy out of it or block it; a tier
root that someone else could write to stops the engine. Other boundaries have their own modules:
modes and owners through a mount (csi/fuse/test_daemon.py, test_lifecycle.py), kubelet paths
and volume ids (test_node_boundary.py, test_hostile_input.py), redirects, private addresses and
signed URLs (cache_engine/ufs/test_http.py, test_ephemeral.py, test_preload_status.py), socket
modes (test_sockets.py), secrets at rest (test_secrets_at_rest.py).
"""

from __future__ import annotations

import os
import stat

import grpc
import pytest

from cache_engine.engine import CacheEngine
from cache_engine.tiers import parse_tiers
from eddy.base.errors import FailedPrecondition
from eddy.base.pb import csi_pb2
from tests.support.driver import (
    create,
    mount_capability,
    mounts_under,
    stage_and_publish,
    teardown_volume,
)
from tests.support.fuse import fuse_problem

needs_fuse = pytest.mark.skipif(fuse_problem() is not None, reason=str(fuse_problem()))


def _stage_error(driver, tmp_path, source: str) -> grpc.RpcError:
    volume = create(driver, f"pvc-{abs(hash(source)) % 10**8}", {"source": source})
    with pytest.raises(grpc.RpcError) as e:
        driver.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=volume.volume_id, volume_capability=mount_capability(),
            staging_target_path=str(tmp_path / "kubelet" / "staging" / volume.volume_id),
            volume_context=volume.volume_context))
    return e.value


@needs_fuse
@pytest.mark.parametrize("where", ["middle", "root", "dotdot-after-link"])
def test_a_source_reached_through_a_symlink_is_refused(driver, tmp_path, where):
    secret = tmp_path / "host" / "etc"
    secret.mkdir(parents=True)
    (secret / "shadow").write_bytes(b"root:$6$not-for-pods")
    allowed = tmp_path / "srv" / "shared"
    allowed.mkdir(parents=True)
    if where == "middle":  # local:///srv/shared/up/etc, up -> the host's root
        os.symlink(tmp_path / "host", allowed / "up")
        source = f"local://{allowed}/up/etc"
    elif where == "root":  # the source directory itself is a link
        os.symlink(secret, allowed / "etc")
        source = f"local://{allowed}/etc"
    else:  # a link, then `..`: the path names a directory the link's target leads out to
        (tmp_path / "host" / "deep").mkdir()
        os.symlink(tmp_path / "host" / "deep", allowed / "jump")
        source = f"local://{allowed}/jump/../etc"
    if where == "dotdot-after-link":  # refused before anything is opened
        with pytest.raises(grpc.RpcError) as e:
            create(driver, "pvc-dotdot", {"source": source})
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'..'" in e.value.details()
    else:
        error = _stage_error(driver, tmp_path, source)
        assert "is a symlink, and eddy follows none" in error.details()
    assert "not-for-pods" not in driver.log()
    assert mounts_under(str(tmp_path / "kubelet")) == []


@needs_fuse
def test_links_and_special_files_inside_a_dataset_never_lead_out_or_block(driver, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"another team's bytes")
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "ok").write_bytes(b"mine")
    os.symlink(outside / "secret", src / "abs-out")
    os.symlink("../outside/secret", src / "rel-out")
    os.symlink("..", src / "dir" / "up")  # stays inside: shown as a link
    os.symlink("../../outside", src / "dir" / "up-out")
    os.mkfifo(src / "fifo")
    os.symlink("fifo", src / "to-fifo")
    os.symlink("/dev/zero", src / "to-device")
    volume = create(driver, "pvc-links", {"source": f"local://{src}", "metadataTTL": "0"})
    staging, [target] = stage_and_publish(driver, tmp_path, volume, targets=("pod-a",))
    shown = set(os.listdir(target)) | {f"dir/{n}" for n in os.listdir(os.path.join(target, "dir"))}
    assert shown == {"dir", "dir/ok", "dir/up", "to-fifo"}  # what leaves or is special is hidden
    assert os.readlink(os.path.join(target, "dir", "up")) == ".."  # a link, not followed by eddy
    for name in ("abs-out", "rel-out", "fifo", "to-device", "dir/up-out"):
        assert not os.path.lexists(os.path.join(target, name)), name
    with pytest.raises(OSError):  # the link's target is hidden: nothing to open, nothing blocks
        open(os.path.join(target, "to-fifo"), "rb").close()
    with open(os.path.join(target, "dir", "ok"), "rb") as f:
        assert f.read() == b"mine"
    teardown_volume(driver, volume, staging, [target])


def _engine(tmp_path, root) -> CacheEngine:
    return CacheEngine(parse_tiers([f"SSD:{root}:16Mi"]), str(tmp_path / "state"))


def test_a_tier_root_others_can_write_to_stops_the_engine(tmp_path):
    root = tmp_path / "tier"
    root.mkdir()
    os.chmod(root, 0o777)
    with pytest.raises(FailedPrecondition, match=r"writable by others \(mode 0777\).*chmod 0700"):
        _engine(tmp_path, root)


def test_a_tier_root_owned_by_another_user_stops_the_engine(tmp_path):
    root = tmp_path / "tier"
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    with pytest.raises(FailedPrecondition, match="owned by uid 65534"):
        _engine(tmp_path, root)


def test_a_tier_root_that_is_a_symlink_stops_the_engine(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    os.symlink(real, tmp_path / "tier")
    with pytest.raises(FailedPrecondition, match=f"is a symlink.*{real}"):
        _engine(tmp_path, tmp_path / "tier")


def test_a_tier_root_only_too_readable_is_made_private(tmp_path):
    root = tmp_path / "tier"
    root.mkdir()
    os.chmod(root, 0o755)  # what kubelet makes of a DirectoryOrCreate hostPath
    _engine(tmp_path, root).close()
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
