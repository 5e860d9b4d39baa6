"""Hostile input: every bad field is refused with its gRPC code and a message naming the field.

One table of requests, each sent through the real servicers over a real gRPC unix socket: the
controller with its SQLite store, the node with a mounter that only records (every case is
refused before anything would be mounted, and the test checks that nothing was). The limits
are those of README "Volume parameters": 128-byte volume ids, 256-byte names, absolute paths
of at most 4096 bytes with 255-byte components, no control characters, at most 64 parameters,
256-byte keys, 4 KiB values, 16 KiB secret values.
"""

from __future__ import annotations

import grpc
import pytest

from csi.controller import ControllerService
from csi.ephemeral import EphemeralPolicy
from csi.kube.api import LazyCoreApi
from csi.kube.volume_store import KubernetesVolumeStore
from csi.node import NodeService
from csi.state.volumes import SqliteVolumeStore, VolumeRecord
from eddy.base.errors import InvalidArgument
from eddy.base.pb import csi_pb2, csi_pb2_grpc
from tests.support.driver import mount_capability
from tests.support.fake_daemons import FakeMounter
from tests.support.grpc_server import serve
from tests.support.kube import FakeCoreApi

INVALID = grpc.StatusCode.INVALID_ARGUMENT
VOLUME_ID = "eddy-" + "0" * 32
STAGING = "/var/lib/kubelet/plugins/kubernetes.io/csi/eddy.csi.io/abc/globalmount"
TARGET = "/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~csi/pvc-1/mount"
LOCAL = {"source": "local:///data"}
SECRET = "hunter2-s3cr3t"  # must never show in a message
LONG_NAME = "n" * 300  # one path component over NAME_MAX


def block_capability() -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(),
                                    access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))


def create(name="pvc-1", params=None, capabilities=None, required=0, limit=0):
    return ("controller", "CreateVolume", csi_pb2.CreateVolumeRequest(
        name=name, parameters=LOCAL if params is None else params,
        volume_capabilities=[mount_capability()] if capabilities is None else capabilities,
        capacity_range=csi_pb2.CapacityRange(required_bytes=required, limit_bytes=limit)))


def param(key, value, source="local:///data"):
    """CreateVolume with one parameter beside a good source."""
    return create(params={"source": source, key: value})


def source(value):
    return create(params={"source": value})


def stage(volume_id=VOLUME_ID, path=STAGING, context=None, secrets=None, capability=True):
    return ("node", "NodeStageVolume", csi_pb2.NodeStageVolumeRequest(
        volume_id=volume_id, staging_target_path=path,
        volume_capability=capability if not isinstance(capability, bool)
        else mount_capability() if capability else None,
        volume_context=LOCAL if context is None else context, secrets=secrets or {}))


def publish(volume_id=VOLUME_ID, target=TARGET, staging=STAGING, context=None, secrets=None):
    return ("node", "NodePublishVolume", csi_pb2.NodePublishVolumeRequest(
        volume_id=volume_id, target_path=target, staging_target_path=staging,
        volume_capability=mount_capability(), readonly=True,
        volume_context=LOCAL if context is None else context, secrets=secrets or {}))


def inline(context, secrets=None):
    return publish(staging="", context={"csi.storage.k8s.io/ephemeral": "true", **context},
                   secrets=secrets)


# (id, (service, rpc, request), expected code, fragments the message must contain)
CASES = [
    # -- CSI fields of the controller -------------------------------------------------------------
    ("name-empty", create(name=""), INVALID, ["name", "required"]),
    ("name-over-256-bytes", create(name="p" * 257), INVALID, ["name", "257 bytes", "256"]),
    ("name-multibyte-over-256-bytes", create(name="é" * 129), INVALID, ["name", "258 bytes"]),
    ("name-1-MiB", create(name="p" * (1 << 20)), INVALID, ["name", "1048576 bytes"]),
    ("name-nul", create(name="pvc\x00-1"), INVALID, ["name", "control characters"]),
    ("name-newline", create(name="pvc-1\n"), INVALID, ["name", "control characters"]),
    ("capabilities-none", create(capabilities=[]), INVALID, ["volume_capabilities", "required"]),
    ("capability-block", create(capabilities=[block_capability()]), INVALID,
     ["volume_capabilities[0]", "filesystems only"]),
    ("capability-no-access-type", create(capabilities=[csi_pb2.VolumeCapability(
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))]), INVALID,
     ["volume_capabilities[0]", "access_type"]),
    ("capability-unknown-mode", create(capabilities=[
        mount_capability(), mount_capability(mode=0)]), INVALID,
     ["volume_capabilities[1]", "access_mode"]),
    ("capacity-negative", create(required=-1), INVALID, ["capacity_range", "negative"]),
    ("capacity-limit-below-required", create(required=2 << 30, limit=1 << 30), INVALID,
     ["capacity_range", "limit_bytes"]),
    ("capacity-against-cacheCapacity", create(params=LOCAL | {"cacheCapacity": "1Gi"},
                                              required=2 << 30),
     grpc.StatusCode.OUT_OF_RANGE, ["cacheCapacity", "capacity_range"]),
    ("delete-id-empty", ("controller", "DeleteVolume", csi_pb2.DeleteVolumeRequest()), INVALID,
     ["volume_id", "required"]),
    ("delete-id-over-128-bytes", ("controller", "DeleteVolume", csi_pb2.DeleteVolumeRequest(
        volume_id="eddy-" + "0" * 124)), INVALID, ["volume_id", "129 bytes", "128"]),
    ("validate-id-nul", ("controller", "ValidateVolumeCapabilities",
                         csi_pb2.ValidateVolumeCapabilitiesRequest(
                             volume_id="eddy-\x00", volume_capabilities=[mount_capability()])),
     INVALID, ["volume_id", "control characters"]),
    ("capacity-query-bad-parameters", ("controller", "GetCapacity", csi_pb2.GetCapacityRequest(
        parameters={"source": "http://[x/y"})), INVALID, ["source", "URL"]),
    # -- parameters, key by key -----------------------------------------------------------------
    ("cacheCapacity-400-digits", param("cacheCapacity", "9" * 400), INVALID,
     ["cacheCapacity", "maximum"]),
    ("cacheCapacity-400-digits-decimal", param("cacheCapacity", "9" * 400 + ".5Ei"), INVALID,
     ["cacheCapacity", "maximum"]),
    ("cacheCapacity-exponent", param("cacheCapacity", "1e400"), INVALID,
     ["cacheCapacity", "not a size"]),
    ("cacheCapacity-unicode-digits", param("cacheCapacity", "٣Gi"), INVALID,
     ["cacheCapacity", "not a size"]),
    ("blockSize-400-digits", param("blockSize", "9" * 400), INVALID, ["blockSize", "maximum"]),
    ("blockSize-newline", param("blockSize", "4Mi\n"), INVALID,
     ["blockSize", "control characters"]),
    ("tiers-nul", param("tiers", "MEM,\x00"), INVALID, ["tiers", "control characters"]),
    ("tiers-too-long", param("tiers", ",".join(["MEM"] * 2000)), INVALID,
     ["tiers", "over the limit of 4096"]),
    ("tiers-unknown-name-form", param("tiers", "MEM,../SSD"), INVALID, ["tiers", "tier name"]),
    ("preload-100000-characters", param("preload", "p" * 100_000), INVALID,
     ["preload", "100000 bytes", "4096"]),
    ("preload-component-over-255", param("preload", f"a/{LONG_NAME}"), INVALID,
     ["preload", "component of 300 bytes"]),
    ("preload-nul", param("preload", "a\x00b"), INVALID, ["preload", "control characters"]),
    ("metadataTTL-overflow", param("metadataTTL", "1e400"), INVALID, ["metadataTTL", "outside"]),
    ("metadataTTL-nan", param("metadataTTL", "nan"), INVALID, ["metadataTTL", "outside"]),
    ("readAhead-400-digits", param("readAhead", "9" * 400), INVALID, ["readAhead", "outside"]),
    ("readAhead-negative", param("readAhead", "-1"), INVALID, ["readAhead", "outside"]),
    ("prefetch-4000-bytes", param("prefetch", "whole" * 800), INVALID,
     ["prefetch", "not one of off, safetensors, whole"]),
    ("prefetch-nul", param("prefetch", "whole\x00"), INVALID, ["prefetch", "control characters"]),
    ("prefetch-a-path", param("prefetch", "model.safetensors"), INVALID, ["prefetch", "not one"]),
    ("region-trailing-newline", param("region", "us-east-1\n", "s3://b-1"), INVALID,
     ["region", "control characters"]),
    ("region-3000-non-ascii", param("region", "é" * 3000, "s3://b-1"), INVALID,
     ["region", "6000 bytes"]),
    ("endpoint-bad-ipv6", param("endpoint", "http://[x/y", "s3://b-1"), INVALID,
     ["endpoint", "not a valid URL"]),
    ("endpoint-nul", param("endpoint", "http://minio\x00:9000", "s3://b-1"), INVALID,
     ["endpoint", "control characters"]),
    ("key-unknown-1000-bytes", create(params=LOCAL | {"k" * 1000: "v"}), INVALID,
     ["kkkk", "key is 1000 bytes", "256"]),
    ("key-nul", create(params=LOCAL | {"cache\x00Capacity": "1Gi"}), INVALID,
     ["cache\\x00Capacity", "control characters"]),
    ("key-empty", create(params=LOCAL | {"": "x"}), INVALID, ["''", "key is empty"]),
    ("parameters-65", create(params=LOCAL | {f"csi.storage.k8s.io/k{i}": "v" for i in range(64)}),
     INVALID, ["parameters", "65 keys", "64"]),
    ("reserved-value-over-64-KiB", create(params=LOCAL | {
        "csi.storage.k8s.io/pvc/name": "p" * (65 << 10)}), INVALID,
     ["csi.storage.k8s.io/pvc/name", "65536"]),
    ("secret-as-parameter", param("sessionToken", SECRET), INVALID,
     ["sessionToken", "node-stage secret"]),
    # -- sources of every scheme --------------------------------------------------------------
    ("source-empty", source(""), INVALID, ["source", "required"]),
    ("source-http-bad-ipv6", source("http://[x/y"), INVALID, ["source", "not a valid URL"]),
    ("source-https-unclosed-ipv6", source("https://[::1/models"), INVALID,
     ["source", "not a valid URL"]),
    ("source-https-no-host", source("https:///x"), INVALID, ["source", "host"]),
    ("source-over-4096-bytes", source("https://example.com/" + "a/" * 2100), INVALID,
     ["source", "over the limit of 4096"]),
    ("source-local-nul", source("local:///data\x00/x"), INVALID, ["source", "control"]),
    ("source-local-component-over-255", source(f"local:///data/{LONG_NAME}"), INVALID,
     ["source", "component of 300 bytes"]),
    ("source-local-relative", source("local:data"), INVALID, ["source", "absolute"]),
    ("source-s3-long-bucket", source("s3://" + "b" * 400 + "/x"), INVALID,
     ["source", "S3 bucket name"]),
    ("source-s3-component-over-255", source(f"s3://bucket/{LONG_NAME}/x"), INVALID,
     ["source", "component of 300 bytes"]),
    ("source-s3-bad-ipv6", source("s3://[bucket/x"), INVALID, ["source", "not a valid URL"]),
    ("source-pvc-long-name", source("pvc://ns/" + "c" * 300), INVALID,
     ["source", "Kubernetes name"]),
    ("source-pvc-subdir-component-over-255", source(f"pvc://ns/claim/{LONG_NAME}"), INVALID,
     ["source", "component of 300 bytes"]),
    ("source-nfs-bad-ipv6", source("nfs://[nas/exports"), INVALID, ["source", "not a valid URL"]),
    ("source-nfs-component-over-255", source(f"nfs://nas/exports/{LONG_NAME}"), INVALID,
     ["source", "component of 300 bytes"]),
    ("source-ftp", source("ftp://host/x"), INVALID, ["source", "scheme"]),
    ("source-nfs-server-like-an-option", source("nfs://-oexec/exports"), INVALID,
     ["source", "-oexec", "not a server name"]),
    # -- CSI fields of the node -----------------------------------------------------------------
    ("stage-id-nul", stage(volume_id="eddy-\x00"), INVALID, ["volume_id", "control"]),
    ("stage-id-over-128-bytes", stage(volume_id="v" * 200), INVALID, ["volume_id", "200 bytes"]),
    ("stage-path-empty", stage(path=""), INVALID, ["staging_target_path", "required"]),
    ("stage-path-relative", stage(path="var/lib/kubelet/x"), INVALID,
     ["staging_target_path", "absolute"]),
    ("stage-path-nul", stage(path=STAGING + "\x00x"), INVALID,
     ["staging_target_path", "control characters"]),
    ("stage-path-over-4096-bytes", stage(path="/x" * 2100), INVALID,
     ["staging_target_path", "4200 bytes", "4096"]),
    ("stage-path-component-over-255", stage(path=f"/var/lib/kubelet/{LONG_NAME}"), INVALID,
     ["staging_target_path", "component of 300 bytes", "255"]),
    ("stage-no-capability", stage(capability=False), INVALID, ["volume_capability", "required"]),
    ("stage-block-capability", stage(capability=block_capability()), INVALID,
     ["volume_capability", "filesystems only"]),
    ("stage-unknown-tier", stage(context=LOCAL | {"tiers": "MEM,NOPE"}), INVALID,
     ["tiers", "'NOPE' is not a tier of node n1", "its tiers: MEM, SSD"]),
    ("stage-unknown-tiers", stage(context=LOCAL | {"tiers": "HDD,NOPE"}), INVALID,
     ["tiers", "'HDD', 'NOPE' are not tiers"]),
    ("stage-context-preload-100000", stage(context=LOCAL | {"preload": "p" * 100_000}), INVALID,
     ["preload", "100000 bytes"]),
    ("stage-context-bad-url", stage(context={"source": "http://[x/y"}), INVALID,
     ["source", "not a valid URL"]),
    ("stage-context-unresolved-pvc", stage(context={"source": "pvc://ns/claim"}), INVALID,
     ["source", "resolved by the controller"]),
    ("stage-secret-unknown-key", stage(secrets={"password": SECRET}), INVALID,
     ["password", "unknown secret key"]),
    ("stage-secret-newline", stage(secrets={"accessKeyId": "AKIA",
                                            "secretAccessKey": SECRET + "\n"}), INVALID,
     ["secretAccessKey", "control characters"]),
    ("stage-secret-over-16-KiB", stage(secrets={"accessKeyId": "AKIA", "secretAccessKey": SECRET,
                                                "sessionToken": SECRET * 2000}), INVALID,
     ["sessionToken", "16384"]),
    ("stage-secret-half-pair", stage(secrets={"accessKeyId": SECRET}), INVALID,
     ["secretAccessKey", "go together"]),
    ("unstage-path-relative", ("node", "NodeUnstageVolume", csi_pb2.NodeUnstageVolumeRequest(
        volume_id=VOLUME_ID, staging_target_path="globalmount")), INVALID,
     ["staging_target_path", "absolute"]),
    ("publish-target-relative", publish(target="pods/uid-1/mount"), INVALID,
     ["target_path", "absolute"]),
    ("publish-target-nul", publish(target=TARGET + "\x00"), INVALID,
     ["target_path", "control characters"]),
    ("publish-target-component-over-255", publish(target=f"/var/lib/kubelet/pods/{LONG_NAME}"),
     INVALID, ["target_path", "component of 300 bytes"]),
    ("publish-staging-nul", publish(staging=STAGING + "\x00"), INVALID,
     ["staging_target_path", "control characters"]),
    ("publish-context-key-over-256", publish(context=LOCAL | {"x" * 300: "1"}), INVALID,
     ["xxxx", "key is 300 bytes"]),
    ("publish-not-staged", publish(), grpc.StatusCode.NOT_FOUND, [VOLUME_ID, "not staged"]),
    ("publish-inline-bad-url", inline({"source": "https://[::1/x"}), INVALID,
     ["source", "not a valid URL"]),
    ("publish-inline-secret-nul", inline({"source": "s3://b-1"}, {"accessKeyId": "AKIA\x00",
                                                                  "secretAccessKey": SECRET}),
     INVALID, ["accessKeyId", "control characters"]),
    ("unpublish-target-nul", ("node", "NodeUnpublishVolume", csi_pb2.NodeUnpublishVolumeRequest(
        volume_id=VOLUME_ID, target_path="/var/lib/\x00")), INVALID,
     ["target_path", "control characters"]),
    ("stats-path-relative", ("node", "NodeGetVolumeStats", csi_pb2.NodeGetVolumeStatsRequest(
        volume_id=VOLUME_ID, volume_path="mount")), INVALID, ["volume_path", "absolute"]),
    # -- what the node may touch: kubelet's directory, ids that name nothing else -----------------
    ("stage-path-outside-kubelet", stage(path="/etc/eddy-staging"), INVALID,
     ["staging_target_path", "not under the kubelet directory /var/lib/kubelet"]),
    ("stage-path-dotdot-out-of-kubelet", stage(path="/var/lib/kubelet/../../../etc/x"), INVALID,
     ["staging_target_path", "/etc/x", "not under the kubelet directory"]),
    ("stage-path-is-kubelet-dir", stage(path="/var/lib/kubelet"), INVALID,
     ["staging_target_path", "not under the kubelet directory"]),
    ("publish-target-outside-kubelet", publish(target="/root/.ssh"), INVALID,
     ["target_path", "not under the kubelet directory"]),
    ("unpublish-target-outside-kubelet", ("node", "NodeUnpublishVolume",
                                          csi_pb2.NodeUnpublishVolumeRequest(
                                              volume_id=VOLUME_ID, target_path="/proc")), INVALID,
     ["target_path", "not under the kubelet directory"]),
    ("stats-path-outside-kubelet", ("node", "NodeGetVolumeStats", csi_pb2.NodeGetVolumeStatsRequest(
        volume_id=VOLUME_ID, volume_path="/")), INVALID, ["volume_path", "not under"]),
    ("stage-id-slash", stage(volume_id="a/b"), INVALID, ["volume_id", "'/'"]),
    ("stage-id-dotdot", stage(volume_id=".."), INVALID, ["volume_id", "'..'"]),
    ("stage-id-leading-dash", stage(volume_id="-rf"), INVALID, ["volume_id", "'-'"]),
    ("unpublish-id-leading-dash", ("node", "NodeUnpublishVolume",
                                   csi_pb2.NodeUnpublishVolumeRequest(
                                       volume_id="--help", target_path=TARGET)), INVALID,
     ["volume_id", "'-'"]),
]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The controller (SQLite) and a node with tiers MEM and SSD that allows s3://b-1 inline,
    on one socket."""
    state = tmp_path_factory.mktemp("hostile")
    store = SqliteVolumeStore.in_state_dir(state / "controller")
    mounter = FakeMounter()
    node = NodeService("n1", str(state / "node"), mounter=mounter, tier_names=("MEM", "SSD"),
                       ephemeral=EphemeralPolicy.from_flags(["s3://b-1"]))
    # No pvc:// resolution: a pvc:// source reaches the node unresolved, as a broken CO's would.
    with serve(ControllerService(store, resolve=lambda spec: spec), node) as served:
        yield {"controller": csi_pb2_grpc.ControllerStub(served.channel),
               "node": csi_pb2_grpc.NodeStub(served.channel)}, mounter
    node.close()
    store.close()


@pytest.mark.parametrize("case, call, code, fragments", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_naming_the_field(driver, case, call, code, fragments):
    stubs, mounter = driver
    service, rpc, request = call
    with pytest.raises(grpc.RpcError) as info:
        getattr(stubs[service], rpc)(request, timeout=30)
    details = info.value.details()
    assert info.value.code() == code, details
    for fragment in fragments:
        assert fragment in details
    assert SECRET not in details
    assert len(details.encode()) <= 1024
    assert not mounter.sources  # nothing was ever mounted


def test_a_1_mib_name_never_reaches_the_kubernetes_store():
    """A name the ConfigMap cannot hold is refused before the API is asked: it used to be
    answered UNAVAILABLE (the API server's 422), which a provisioner retries forever."""
    asked = []
    api = LazyCoreApi(lambda: asked.append(True) or FakeCoreApi())
    with serve(ControllerService(KubernetesVolumeStore(api, "eddy"))) as served:
        stub = csi_pb2_grpc.ControllerStub(served.channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateVolume(create(name="p" * (1 << 20))[2], timeout=30)
    assert info.value.code() == INVALID
    assert "name is 1048576 bytes long" in info.value.details()
    assert not asked


def test_the_kubernetes_store_refuses_a_record_over_a_config_map():
    api = FakeCoreApi()
    store = KubernetesVolumeStore(LazyCoreApi(lambda: api), "eddy")
    record = VolumeRecord(VOLUME_ID, "pvc-1", {"source": "local:///" + "d" * (1 << 20)}, 0, 1.0)
    with pytest.raises(InvalidArgument, match="over the 1048576 of a ConfigMap"):
        store.create(record)
    assert not api.config_maps
