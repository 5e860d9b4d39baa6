"""pvc:// sources resolve through the Kubernetes API to the data of the claim's bound PV.

The claims and volumes are YAML fixtures loaded as the kubernetes client's own models, served
by a stand-in for the API at the client's method boundary (tests/support/kube.py). The last
tests go through the Controller service: the volume records and returns the resolved source.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cache_engine.source import parse_source
from cache_engine.spec import parse_parameters
from csi.controller import ControllerService
from csi.kube.api import LazyCoreApi
from csi.kube.pvc import PvcResolver
from csi.state.volumes import SqliteVolumeStore
from eddy.base.errors import FailedPrecondition, InvalidArgument, Unavailable
from eddy.base.pb import csi_pb2
from tests.support.kube import FakeCoreApi, load_models

FIXTURES = Path(__file__).parent / "fixtures" / "claims.yaml"


@pytest.fixture
def api():
    return FakeCoreApi(load_models(FIXTURES))


@pytest.fixture
def resolve(api):
    return PvcResolver(LazyCoreApi(lambda: api))


@pytest.mark.parametrize("source, expected", [
    ("pvc://default/models-host", "local:///var/lib/models"),
    ("pvc://default/models-host/llama/8b", "local:///var/lib/models/llama/8b"),
    ("pvc://ml/datasets/imagenet", "local:///mnt/disks/ssd1/imagenet"),
    ("pvc://ml/models-nfs", "nfs://nas.example.com/exports/models"),
    ("pvc://ml/models-nfs/llama-3-8b", "nfs://nas.example.com/exports/models/llama-3-8b"),
    ("pvc://ml/models-nfs6/x", "nfs://[fd00::5]/srv/nfs/x"),
])
def test_supported_pv_kinds_resolve_to_a_source_the_node_reads(resolve, source, expected):
    assert resolve.resolve(parse_source(source)) == expected
    spec = resolve(parse_parameters({"source": source, "cacheCapacity": "2Gi"}))
    assert spec.source == parse_source(expected)
    assert spec.cache_capacity == 2 << 30


@pytest.mark.parametrize("source, words", [
    ("pvc://default/cephfs-models", ["default/cephfs-models", "csi (driver cephfs.csi.ceph.com)",
                                     "pvc-5d2c1e8a", "hostPath, local and nfs"]),
    ("pvc://default/ebs", ["PV pv-ebs", "awsElasticBlockStore"]),
])
def test_other_pv_kinds_are_refused_naming_the_kind(resolve, source, words):
    with pytest.raises(InvalidArgument) as info:
        resolve(parse_parameters({"source": source}))
    for word in words:
        assert word in str(info.value)


def test_an_unbound_or_missing_claim_is_a_failed_precondition(resolve):
    with pytest.raises(FailedPrecondition, match="default/pending is not bound.*Pending"):
        resolve(parse_parameters({"source": "pvc://default/pending"}))
    with pytest.raises(FailedPrecondition, match="PVC default/nope does not exist"):
        resolve(parse_parameters({"source": "pvc://default/nope"}))


def test_other_sources_pass_through_without_an_api_call():
    def no_cluster():
        raise AssertionError("the API must not be asked")

    spec = parse_parameters({"source": "s3://bucket/x"})
    assert PvcResolver(LazyCoreApi(no_cluster))(spec) is spec


def test_no_cluster_is_unavailable_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "")
    with pytest.raises(Unavailable, match="Kubernetes API is not reachable"):
        PvcResolver(LazyCoreApi())(parse_parameters({"source": "pvc://default/x"}))


# -- through the controller -------------------------------------------------------------------

def create(controller, name, source):
    cap = csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(
            mode=csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY))
    return controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=name, parameters={"source": source}, volume_capabilities=[cap]))


def test_create_volume_records_the_resolved_source(resolve, tmp_path):
    store = SqliteVolumeStore.in_state_dir(tmp_path)
    controller = ControllerService(store, resolve=resolve)
    volume = create(controller, "pvc-1", "pvc://ml/models-nfs/llama").volume
    assert volume.volume_context["source"] == "nfs://nas.example.com/exports/models/llama"
    again = create(controller, "pvc-1", "pvc://ml/models-nfs/llama").volume  # idempotent
    assert again.volume_id == volume.volume_id
    assert store.get(volume.volume_id).parameters["source"] == volume.volume_context["source"]
    store.close()


def test_without_an_api_the_controller_refuses_pvc_sources(tmp_path):
    store = SqliteVolumeStore.in_state_dir(tmp_path)
    with pytest.raises(Unavailable, match="pvc:// sources need the Kubernetes API"):
        create(ControllerService(store), "pvc-1", "pvc://default/models-host")
    store.close()
