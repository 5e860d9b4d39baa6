"""The Kubernetes-API volume store: the same contract as SQLite, shared by controller replicas.

The API is the stand-in of tests/support/kube.py (the client's own models and ApiException,
uids, resourceVersions, delete preconditions, paginated lists).
"""

from __future__ import annotations

import threading

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from csi.controller import ControllerService
from csi.kube.api import LazyCoreApi
from csi.kube.volume_store import ID_LABEL, KubernetesVolumeStore, object_name
from csi.state.volumes import SqliteVolumeStore, VolumeRecord
from eddy.base.errors import Aborted, AlreadyExists, Unavailable
from eddy.base.pb import csi_pb2
from tests.support.kube import FakeCoreApi
from tests.support.kustomize import validate

NS = "eddy"


def record(n: int, name: str | None = None) -> VolumeRecord:
    return VolumeRecord(f"eddy-{n:032x}", name or f"pvc-{n}",
                        {"source": "s3://bucket/x", "blockSize": "4194304"}, n << 20, 1.5 + n)


def kube_store(api: FakeCoreApi, page_size: int = 500) -> KubernetesVolumeStore:
    return KubernetesVolumeStore(LazyCoreApi(lambda: api), NS, page_size)


@pytest.fixture(params=["kubernetes", "sqlite"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqliteVolumeStore.in_state_dir(tmp_path)
        yield s
        s.close()
    else:
        yield kube_store(FakeCoreApi(), page_size=2)  # lists take several pages


# -- the VolumeStore contract, for both stores ------------------------------------------------

def test_create_then_get_by_id_and_by_name(store):
    r = record(1)
    store.create(r)
    assert store.get(r.volume_id) == r
    assert store.get_by_name("pvc-1") == r
    assert store.get(record(2).volume_id) is None and store.get_by_name("pvc-2") is None


def test_a_name_is_taken_once(store):
    store.create(record(1, "claim"))
    with pytest.raises(AlreadyExists):
        store.create(record(2, "claim"))
    assert store.get_by_name("claim").volume_id == record(1).volume_id


def test_delete_is_true_once(store):
    store.create(record(1))
    assert store.delete(record(1).volume_id) is True
    assert store.delete(record(1).volume_id) is False
    assert store.get(record(1).volume_id) is None
    assert store.delete("not a label value / at all") is False


def test_list_is_ordered_by_id_and_pages(store):
    for n in (5, 3, 9, 1, 7):
        store.create(record(n))
    ids = [r.volume_id for r in store.list(after=None, limit=0)]
    assert ids == sorted(ids) and len(ids) == 5
    assert [r.volume_id for r in store.list(after=ids[1], limit=2)] == ids[2:4]
    assert store.list(after=ids[-1], limit=0) == []


# -- what only the Kubernetes store does ------------------------------------------------------

def test_a_record_is_one_valid_configmap_named_after_the_volume_name():
    api = FakeCoreApi()
    kube_store(api).create(record(1, "Any Name/ at all"))
    (namespace, name), = api.config_maps
    stored = api.config_maps[(namespace, name)]
    assert (namespace, name) == (NS, object_name("Any Name/ at all"))
    assert stored.metadata.labels[ID_LABEL] == record(1).volume_id
    assert stored.data["name"] == "Any Name/ at all"
    wire = client.ApiClient().sanitize_for_serialization(stored)
    assert not validate({"apiVersion": "v1", "kind": "ConfigMap", **wire})


def test_two_replicas_racing_on_one_name_make_one_volume():
    api = FakeCoreApi()
    replicas = [ControllerService(kube_store(api)) for _ in range(2)]
    barrier, ids, errors = threading.Barrier(8), [], []

    def create(controller):
        barrier.wait()
        try:
            ids.append(controller.CreateVolume(_create_request("racy")).volume.volume_id)
        except Aborted as e:  # the same name in flight on the same replica: retry later
            errors.append(e)

    threads = [threading.Thread(target=create, args=(replicas[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids += [r.CreateVolume(_create_request("racy")).volume.volume_id for r in replicas]
    assert len(set(ids)) == 1 and len(ids) + len(errors) == 10
    assert len(api.config_maps) == 1
    replicas[1].DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=ids[0]))
    assert not api.config_maps
    assert not replicas[0].ListVolumes(csi_pb2.ListVolumesRequest()).entries


def test_a_stale_delete_never_removes_a_recreated_record(monkeypatch):
    api = FakeCoreApi()
    store = kube_store(api)
    store.create(record(1, "claim"))
    stale = store._find(record(1).volume_id)
    store.delete(record(1).volume_id)
    store.create(record(1, "claim"))  # deleted and created again: a new uid
    monkeypatch.setattr(store, "_find", lambda volume_id: stale)
    with pytest.raises(Aborted):
        store.delete(record(1).volume_id)
    assert api.config_maps  # the new record is still there


def test_an_unreadable_record_is_skipped_in_lists_and_named_in_gets():
    api = FakeCoreApi()
    store = kube_store(api)
    store.create(record(1))
    store.create(record(2))
    api.config_maps[(NS, object_name("pvc-2"))].data = {"name": "pvc-2"}
    assert [r.volume_id for r in store.list(None, 0)] == [record(1).volume_id]
    with pytest.raises(Unavailable, match=f"{object_name('pvc-2')} is not a valid"):
        store.get_by_name("pvc-2")


def test_refused_by_rbac_is_unavailable_and_says_so():
    class Forbidden(FakeCoreApi):
        def read_namespaced_config_map(self, name, namespace, **kwargs):
            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(Unavailable, match="RBAC"):
        kube_store(Forbidden()).get_by_name("pvc-1")


def _create_request(name: str) -> csi_pb2.CreateVolumeRequest:
    cap = csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(
            mode=csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY))
    return csi_pb2.CreateVolumeRequest(name=name, parameters={"source": "s3://bucket/x"},
                                       volume_capabilities=[cap])
