"""Inline ephemeral volumes: only sources the node's administrator allowed are mounted.

The policy is checked on its own first; then over the real driver (`eddy serve` on its
socket, NodePublishVolume as kubelet sends it for an inline volume: no staging path,
`csi.storage.k8s.io/ephemeral: "true"`): a disallowed source is INVALID_ARGUMENT with nothing
mounted; an allowed one is mounted, readable, survives a plugin restart and is unpublished
cleanly.
"""

from __future__ import annotations

import os
import signal

import grpc
import pytest

from cache_engine.spec import parse_parameters
from csi.ephemeral import EphemeralPolicy, is_ephemeral
from eddy.base.errors import InvalidArgument
from eddy.base.pb import csi_pb2
from tests.support.driver import (
    AccessMode,
    DriverProcess,
    cleanup_mounts,
    daemon_pids,
    mount_capability,
    mounts_under,
)

EPHEMERAL = {"csi.storage.k8s.io/ephemeral": "true",
             "csi.storage.k8s.io/pod.name": "reader", "csi.storage.k8s.io/pod.namespace": "ml"}
needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs /dev/fuse and root for real FUSE and bind mounts")


def admit(policy: EphemeralPolicy, **params):
    return policy.admit(parse_parameters(params))


# -- the policy -------------------------------------------------------------------------------

def test_nothing_is_allowed_by_default():
    for source in ("s3://bucket/x", "local:///srv", "https://example.com/f", "nfs://nas/x"):
        with pytest.raises(InvalidArgument, match="--ephemeral-allow"):
            admit(EphemeralPolicy(), source=source)


def test_allowed_prefixes_match_whole_path_segments():
    policy = EphemeralPolicy.from_flags(["s3://datasets/public,https://mirror.example.com/hf",
                                         "local:///srv/shared"])
    for source in ("s3://datasets/public", "s3://datasets/public/mnist",
                   "https://mirror.example.com/hf/x.bin", "local:///srv/shared/a/b"):
        assert admit(policy, source=source).source.uri.startswith(source.split("/x")[0])
    for source in ("s3://datasets/publicity", "s3://datasets", "s3://other/public",
                   "https://mirror.example.com/hfx", "https://mirror.example.com.evil/hf/x",
                   "local:///srv/sharedx", "local:///srv", "local:///etc",
                   "https://mirror.example.com/hf/%2e%2e/secret"):
        with pytest.raises(InvalidArgument):
            admit(policy, source=source)


def test_local_is_refused_unless_that_directory_is_listed():
    policy = EphemeralPolicy.from_flags(["s3://bucket"])
    with pytest.raises(InvalidArgument, match="local:// directories must be listed"):
        admit(policy, source="local:///var/lib/kubelet")


def test_pvc_sources_are_never_inline():
    with pytest.raises(InvalidArgument, match="pvc://"):
        EphemeralPolicy.from_flags(["pvc://ml/models"])
    with pytest.raises(InvalidArgument, match="resolved by the controller"):
        admit(EphemeralPolicy.from_flags(["s3://b-1"]), source="pvc://ml/models")


def test_s3_endpoints_must_be_listed():
    policy = EphemeralPolicy.from_flags(["s3://bucket"], ["http://minio.internal:9000/"])
    assert admit(policy, source="s3://bucket/x").endpoint == ""
    assert admit(policy, source="s3://bucket/x", endpoint="http://minio.internal:9000")
    with pytest.raises(InvalidArgument, match="endpoint http://10.0.0.1"):
        admit(policy, source="s3://bucket/x", endpoint="http://10.0.0.1")


def test_tiers_are_limited_and_default_to_the_allowed_ones():
    policy = EphemeralPolicy.from_flags(["s3://bucket"], tiers=["SSD"])
    assert admit(policy, source="s3://bucket").tiers == ("SSD",)
    with pytest.raises(InvalidArgument, match="tier 'MEM'"):
        admit(policy, source="s3://bucket", tiers="MEM,SSD")


def test_bad_flag_entries_name_the_flag():
    with pytest.raises(InvalidArgument, match="--ephemeral-allow.*ftp"):
        EphemeralPolicy.from_flags(["ftp://host/x"])
    assert EphemeralPolicy.from_flags([""], [""], [""]) == EphemeralPolicy()


def test_is_ephemeral():
    assert is_ephemeral(EPHEMERAL) and not is_ephemeral({"source": "s3://b-1"})


# -- over the real driver ---------------------------------------------------------------------

def publish_request(volume_id: str, target: str, **attributes) -> csi_pb2.NodePublishVolumeRequest:
    return csi_pb2.NodePublishVolumeRequest(
        volume_id=volume_id, target_path=target, readonly=True,
        volume_capability=mount_capability(AccessMode.SINGLE_NODE_WRITER),
        volume_context={**attributes, **EPHEMERAL})


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "allowed" / "models"
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(os.urandom(3 << 20))
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("hunter2")
    return root


@pytest.fixture
def driver(tmp_path, dataset):
    allowed = f"local://{tmp_path / 'allowed'},s3://public-bucket/open"
    drv = DriverProcess(str(tmp_path / "driver"), mode="node",
                        extra_args=("--ephemeral-allow", allowed)).start()
    yield drv
    drv.stop()
    cleanup_mounts(str(tmp_path))


@needs_fuse
@pytest.mark.parametrize("source", ["{tmp}/secret", "{tmp}/allowedx", "/"])
def test_disallowed_source_is_invalid_argument_and_nothing_is_mounted(driver, tmp_path, source):
    target = str(tmp_path / "pods" / "p1" / "mount")
    request = publish_request("csi-inline-1", target,
                              source="local://" + source.format(tmp=tmp_path))
    with pytest.raises(grpc.RpcError) as info:
        driver.node.NodePublishVolume(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "--ephemeral-allow" in info.value.details()
    assert mounts_under(str(tmp_path)) == []
    assert not os.path.exists(target)
    assert daemon_pids("csi-inline-1") == []


@needs_fuse
def test_s3_and_pvc_sources_outside_the_list_are_refused(driver, tmp_path):
    target = str(tmp_path / "pods" / "p2" / "mount")
    for attributes in ({"source": "s3://public-bucket/closed"},
                       {"source": "s3://public-bucket/open", "endpoint": "http://127.0.0.1:1"},
                       {"source": "pvc://ml/models"}):
        with pytest.raises(grpc.RpcError) as info:
            driver.node.NodePublishVolume(publish_request("csi-inline-2", target, **attributes))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert mounts_under(str(tmp_path)) == []


@needs_fuse
def test_allowed_source_is_mounted_readable_readopted_and_unpublished(driver, tmp_path,
                                                                      dataset):
    target = str(tmp_path / "pods" / "p3" / "mount")
    request = publish_request("csi-inline-3", target, source=f"local://{dataset}",
                              metadataTTL="immutable")
    driver.node.NodePublishVolume(request)
    driver.node.NodePublishVolume(request)  # idempotent
    assert read(target) == read(str(dataset))
    with pytest.raises(OSError), open(os.path.join(target, "new"), "w"):
        pass  # read-only
    [pid] = daemon_pids("csi-inline-3")

    driver.kill(signal.SIGKILL)  # a plugin restart: the daemon lives on and is re-adopted
    driver.start()
    assert daemon_pids("csi-inline-3") == [pid]
    assert read(target) == read(str(dataset))

    unpublish = csi_pb2.NodeUnpublishVolumeRequest(volume_id="csi-inline-3", target_path=target)
    driver.node.NodeUnpublishVolume(unpublish)
    driver.node.NodeUnpublishVolume(unpublish)  # already gone: still OK
    assert mounts_under(str(tmp_path)) == []
    assert daemon_pids("csi-inline-3") == []
    assert not os.path.exists(target)
    state = driver.state_dir
    assert os.listdir(os.path.join(state, "ephemeral")) == []
    assert not [n for n in os.listdir(os.path.join(state, "node")) if "csi-inline-3" in n]


def read(root: str) -> bytes:
    with open(os.path.join(root, "model.safetensors"), "rb") as f:
        return f.read()
