"""Inline ephemeral volumes: only sources the node's administrator allowed are mounted.

The policy is checked on its own first; then over the real driver (`eddy serve` on its
socket, NodePublishVolume as kubelet sends it for an inline volume: no staging path,
`csi.storage.k8s.io/ephemeral: "true"`): a disallowed source is INVALID_ARGUMENT with nothing
mounted; an allowed one is mounted, readable, survives a plugin restart and is unpublished
cleanly.
"""

from __future__ import annotations

import errno
import os
import signal

import grpc
import pytest

from cache_engine.spec import parse_parameters
from csi.ephemeral import EphemeralPolicy, is_ephemeral
from eddy.base.errors import InvalidArgument, Unavailable
from eddy.base.pb import csi_pb2
from tests.support.driver import (
    AccessMode,
    DriverProcess,
    cleanup_mounts,
    daemon_pids,
    mount_capability,
    mounts_under,
)
from tests.support.http_source import HttpSource

EPHEMERAL = {"csi.storage.k8s.io/ephemeral": "true",
             "csi.storage.k8s.io/pod.name": "reader", "csi.storage.k8s.io/pod.namespace": "ml"}
needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs /dev/fuse and root for real FUSE and bind mounts")


def public(host: str) -> list[str]:
    """A resolver for which every name is on the internet (no DNS in unit tests)."""
    return ["93.184.216.34"]


def admit(policy: EphemeralPolicy, **params):
    return policy.admit(parse_parameters(params))


# -- the policy -------------------------------------------------------------------------------

def test_nothing_is_allowed_by_default():
    for source in ("s3://bucket/x", "local:///srv", "https://example.com/f", "nfs://nas/x"):
        with pytest.raises(InvalidArgument, match="--ephemeral-allow"):
            admit(EphemeralPolicy(), source=source)


def test_allowed_prefixes_match_whole_path_segments():
    policy = EphemeralPolicy.from_flags(["s3://datasets/public,https://mirror.example.com/hf",
                                         "local:///srv/shared"], lookup=public)
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
    policy = EphemeralPolicy.from_flags(["s3://bucket"], ["http://minio.internal:9000/"],
                                        lookup=public)
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


def test_inline_volumes_write_only_where_the_node_says():
    policy = EphemeralPolicy.from_flags(["local:///srv", "s3://bkt/x"],
                                        write=["local:///srv/scratch", "s3://bkt/x/out"])
    assert policy.may_write("local:///srv/scratch/team-a")
    assert policy.may_write("s3://bkt/x/out")
    assert not policy.may_write("local:///srv/models")
    assert not policy.may_write("local:///srv/scratchy")  # whole segments only
    assert not policy.may_write("s3://bkt/x")
    assert not EphemeralPolicy.from_flags(["local:///srv"]).may_write("local:///srv/a")
    with pytest.raises(InvalidArgument, match="--ephemeral-allow-write.*not under"):
        EphemeralPolicy.from_flags(["local:///srv"], write=["local:///data"])


@pytest.mark.parametrize(("params", "address"), [
    ({"source": "http://127.0.0.1:8080/data/"}, "127.0.0.1"),
    ({"source": "http://169.254.169.254/latest/meta-data/"}, "169.254.169.254"),
    ({"source": "https://[::1]/x"}, "::1"),
    ({"source": "https://mirror.example.com/hf/x"}, "10.1.2.3"),  # a name that resolves inside
    ({"source": "s3://bucket/x", "endpoint": "http://minio.internal:9000"}, "100.64.0.7"),
])
def test_private_loopback_and_link_local_hosts_are_refused_unless_allowed(params, address):
    allow = ["http://127.0.0.1:8080/data,http://169.254.169.254/latest,https://[::1]/x",
             "https://mirror.example.com/hf,s3://bucket"]
    inside = {"mirror.example.com": ["93.184.216.34", "10.1.2.3"],
              "minio.internal": ["100.64.0.7"]}

    def lookup(host: str) -> list[str]:
        return inside.get(host, [host])

    policy = EphemeralPolicy.from_flags(allow, ["http://minio.internal:9000"], lookup=lookup)
    with pytest.raises(InvalidArgument, match=f"address {address}.*--ephemeral-allow-private"):
        admit(policy, **params)
    allowed = EphemeralPolicy.from_flags(allow, ["http://minio.internal:9000"], private=True,
                                         lookup=lookup)
    assert admit(allowed, **params).source.uri == params["source"]


def test_a_host_that_does_not_resolve_is_unavailable():
    def nowhere(host: str) -> list[str]:
        raise OSError(-2, "Name or service not known")

    policy = EphemeralPolicy.from_flags(["https://gone.example.com"], lookup=nowhere)
    with pytest.raises(Unavailable, match="gone.example.com does not resolve"):
        admit(policy, source="https://gone.example.com/x")


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


@needs_fuse
def test_an_inline_volume_the_node_lets_write_is_written_and_others_stay_read_only(tmp_path,
                                                                                 dataset):
    scratch = tmp_path / "allowed" / "scratch"
    scratch.mkdir()
    drv = DriverProcess(str(tmp_path / "driver"), mode="node", extra_args=(
        "--ephemeral-allow", f"local://{tmp_path / 'allowed'}",
        "--ephemeral-allow-write", f"local://{scratch}")).start()
    try:
        rw, ro = (str(tmp_path / "pods" / p / "mount") for p in ("w1", "w2"))
        drv.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id="csi-inline-w1", target_path=rw, readonly=False,
            volume_capability=mount_capability(AccessMode.SINGLE_NODE_WRITER),
            volume_context={"source": f"local://{scratch}", **EPHEMERAL}))
        with open(os.path.join(rw, "out.txt"), "w") as f:
            f.write("written inline")
        assert (scratch / "out.txt").read_text() == "written inline"
        drv.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(  # not listed for writes
            volume_id="csi-inline-w2", target_path=ro, readonly=False,
            volume_capability=mount_capability(AccessMode.SINGLE_NODE_WRITER),
            volume_context={"source": f"local://{dataset}", **EPHEMERAL}))
        with pytest.raises(OSError) as refused:
            open(os.path.join(ro, "x"), "w")  # noqa: SIM115 - it must not open
        assert refused.value.errno == errno.EROFS
        for volume_id, target in (("csi-inline-w1", rw), ("csi-inline-w2", ro)):
            drv.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
                volume_id=volume_id, target_path=target))
        assert mounts_under(str(tmp_path)) == []
    finally:
        drv.stop()
        cleanup_mounts(str(tmp_path))


@pytest.fixture
def http_site(dataset):
    with HttpSource(dataset) as site:
        yield site


def http_driver(tmp_path, site: HttpSource, *flags: str) -> DriverProcess:
    allowed = f"{site.url},http://169.254.169.254/latest"
    return DriverProcess(str(tmp_path / "driver"), mode="node",
                         extra_args=("--ephemeral-allow", allowed, *flags)).start()


def test_loopback_and_metadata_addresses_are_refused_at_publish(tmp_path, http_site):
    drv = http_driver(tmp_path, http_site)
    try:
        target = str(tmp_path / "pods" / "p4" / "mount")
        for source, address in ((http_site.url, "127.0.0.1"),
                                ("http://169.254.169.254/latest/meta-data/", "169.254.169.254")):
            with pytest.raises(grpc.RpcError) as info:
                drv.node.NodePublishVolume(publish_request("csi-inline-4", target, source=source))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"address {address}" in info.value.details()
            assert "--ephemeral-allow-private" in info.value.details()
        assert http_site.requests == []  # the node never asked the address anything
        assert not os.path.exists(target)
    finally:
        drv.stop()
        cleanup_mounts(str(tmp_path))


@needs_fuse
def test_the_node_may_allow_private_addresses(tmp_path, http_site, dataset):
    drv = http_driver(tmp_path, http_site, "--ephemeral-allow-private")
    try:
        target = str(tmp_path / "pods" / "p5" / "mount")
        unpublish = csi_pb2.NodeUnpublishVolumeRequest(volume_id="csi-inline-5", target_path=target)
        drv.node.NodePublishVolume(publish_request("csi-inline-5", target, source=http_site.url))
        assert read(target) == read(str(dataset))
        drv.node.NodeUnpublishVolume(unpublish)
    finally:
        drv.stop()
        cleanup_mounts(str(tmp_path))


def read(root: str) -> bytes:
    with open(os.path.join(root, "model.safetensors"), "rb") as f:
        return f.read()
