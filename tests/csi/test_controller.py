"""The Controller service over a real gRPC server, in the spirit of csi-test's sanity suite."""

from __future__ import annotations

import contextlib
import os
import stat
import threading

import grpc
import pytest

from csi.controller import ControllerService
from csi.state.volumes import SqliteVolumeStore
from eddy.base.pb import csi_pb2, csi_pb2_grpc
from tests.support.grpc_server import serve

GiB = 1 << 30
AccessMode = csi_pb2.VolumeCapability.AccessMode
RPC = csi_pb2.ControllerServiceCapability.RPC
PARAMS = {"source": "local:///data", "blockSize": "1Mi"}


def mount_capability(mode: int = AccessMode.MULTI_NODE_READER_ONLY) -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(),
                                    access_mode=AccessMode(mode=mode))


def block_capability() -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(),
                                    access_mode=AccessMode(mode=AccessMode.SINGLE_NODE_WRITER))


def create_request(name: str = "pvc-1", params: dict | None = None, required: int = 0,
                   limit: int = 0, capabilities=None) -> csi_pb2.CreateVolumeRequest:
    return csi_pb2.CreateVolumeRequest(
        name=name,
        parameters=PARAMS if params is None else params,
        capacity_range=csi_pb2.CapacityRange(required_bytes=required, limit_bytes=limit),
        volume_capabilities=[mount_capability()] if capabilities is None else capabilities,
    )


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value


class Controller:
    """A ControllerService with a SQLite store in `state_dir`, served on a unix socket."""

    def __init__(self, state_dir, capacity=lambda: 100 * GiB):
        self.state_dir = state_dir
        self.capacity = capacity
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> csi_pb2_grpc.ControllerStub:
        store = SqliteVolumeStore.in_state_dir(self.state_dir)
        self._stack.callback(store.close)
        served = self._stack.enter_context(serve(ControllerService(store, self.capacity)))
        return csi_pb2_grpc.ControllerStub(served.channel)

    def __exit__(self, *exc) -> None:
        self._stack.close()


@pytest.fixture
def state_dir(tmp_path):
    return tmp_path / "state"


@pytest.fixture
def controller(state_dir):
    with Controller(state_dir) as stub:
        yield stub


# --- CreateVolume -------------------------------------------------------------------------


def test_create_returns_canonical_parameters_as_volume_context(controller):
    volume = controller.CreateVolume(create_request(required=10 * GiB)).volume
    assert volume.volume_id.startswith("eddy-")
    assert volume.capacity_bytes == 10 * GiB
    assert dict(volume.volume_context) == {
        "source": "local:///data", "blockSize": str(1 << 20), "cacheCapacity": str(10 * GiB),
        "metadataTTL": "60", "readAhead": "8",
    }
    assert not volume.accessible_topology


def test_create_is_idempotent_by_name(controller):
    first = controller.CreateVolume(create_request(required=GiB)).volume
    again = controller.CreateVolume(create_request(required=GiB)).volume
    assert again == first
    # No capacity range at all is compatible with any capacity.
    assert controller.CreateVolume(create_request()).volume == first
    assert len(controller.ListVolumes(csi_pb2.ListVolumesRequest()).entries) == 1


def test_create_same_name_different_parameters_is_already_exists(controller):
    controller.CreateVolume(create_request())
    err = rpc_error(controller.CreateVolume,
                    create_request(params={"source": "local:///other"}))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "pvc-1" in err.details()


def test_create_same_name_incompatible_capacity_is_already_exists(controller):
    controller.CreateVolume(create_request(required=GiB, limit=GiB))
    err = rpc_error(controller.CreateVolume, create_request(required=2 * GiB, limit=2 * GiB))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    err = rpc_error(controller.CreateVolume,
                    create_request(params=PARAMS | {"cacheCapacity": "512Mi"}))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


def test_capacity_without_range_or_parameter_is_unbounded(controller):
    volume = controller.CreateVolume(create_request()).volume
    assert volume.capacity_bytes == 0
    assert "cacheCapacity" not in volume.volume_context


def test_cache_capacity_parameter_must_lie_in_the_range(controller):
    params = PARAMS | {"cacheCapacity": "20Gi"}
    volume = controller.CreateVolume(create_request("a", params, required=10 * GiB)).volume
    assert volume.capacity_bytes == 20 * GiB
    assert volume.volume_context["cacheCapacity"] == str(20 * GiB)
    for required, limit in ((30 * GiB, 0), (GiB, 10 * GiB)):
        err = rpc_error(controller.CreateVolume, create_request("b", params, required, limit))
        assert err.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "cacheCapacity" in err.details()


def test_limit_only_range_and_tiny_sizes(controller):
    assert controller.CreateVolume(create_request("a", limit=5 * GiB)).volume.capacity_bytes \
        == 5 * GiB
    # Below the smallest cache capacity: raised to it when the limit allows, else refused.
    assert controller.CreateVolume(create_request("b", required=1000)).volume.capacity_bytes \
        == 1 << 20
    err = rpc_error(controller.CreateVolume, create_request("c", required=10, limit=1000))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE


def test_limit_below_required_is_invalid(controller):
    err = rpc_error(controller.CreateVolume, create_request(required=2 * GiB, limit=GiB))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit_bytes" in err.details()


@pytest.mark.parametrize("request_", [
    create_request(name=""),
    create_request(capabilities=[]),
], ids=["no-name", "no-capabilities"])
def test_create_missing_fields_is_invalid(controller, request_):
    err = rpc_error(controller.CreateVolume, request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "required" in err.details()


@pytest.mark.parametrize("capabilities", [
    [block_capability()],
    [mount_capability(), block_capability()],
], ids=["block", "mount-and-block"])
def test_block_capability_is_refused(controller, capabilities):
    err = rpc_error(controller.CreateVolume, create_request(capabilities=capabilities))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "filesystems only" in err.details()


def test_capability_without_access_type_is_invalid(controller):
    cap = csi_pb2.VolumeCapability(access_mode=AccessMode(mode=AccessMode.SINGLE_NODE_WRITER))
    err = rpc_error(controller.CreateVolume, create_request(capabilities=[cap]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("mode", [m for m in AccessMode.Mode.values() if m != AccessMode.UNKNOWN])
def test_every_access_mode_is_accepted(controller, mode):
    controller.CreateVolume(create_request(capabilities=[mount_capability(mode)]))


def test_content_source_is_not_supported(controller):
    request = create_request()
    request.volume_content_source.volume.volume_id = "eddy-" + "0" * 32
    err = rpc_error(controller.CreateVolume, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_creates_of_one_name_never_make_two_volumes(controller):
    results, errors = [], []
    barrier = threading.Barrier(12)

    def create():
        barrier.wait()
        try:
            results.append(controller.CreateVolume(create_request("racy")).volume.volume_id)
        except grpc.RpcError as e:
            errors.append(e.code())

    threads = [threading.Thread(target=create) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results and len(set(results)) == 1
    assert set(errors) <= {grpc.StatusCode.ABORTED}
    assert controller.CreateVolume(create_request("racy")).volume.volume_id == results[0]
    assert len(controller.ListVolumes(csi_pb2.ListVolumesRequest()).entries) == 1


# --- DeleteVolume -------------------------------------------------------------------------


def test_delete_unknown_and_twice_succeed(controller):
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="eddy-unknown"))
    volume = controller.CreateVolume(create_request()).volume
    for _ in range(2):
        controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))
    assert not controller.ListVolumes(csi_pb2.ListVolumesRequest()).entries
    # The name is free again, and the new volume is a different volume.
    assert controller.CreateVolume(create_request()).volume.volume_id != volume.volume_id


def test_delete_without_id_is_invalid(controller):
    err = rpc_error(controller.DeleteVolume, csi_pb2.DeleteVolumeRequest())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_delete_never_touches_the_source(controller, tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    (source / "file").write_text("keep me")
    volume = controller.CreateVolume(create_request(params={"source": f"local://{source}"}))
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume.volume_id))
    assert (source / "file").read_text() == "keep me"


# --- ValidateVolumeCapabilities -----------------------------------------------------------


def validate(controller, volume_id, capabilities=None, params=None, context=None):
    return controller.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=volume_id, volume_context=context or {}, parameters=params or {},
        volume_capabilities=[mount_capability()] if capabilities is None else capabilities,
    ))


def test_validate_unknown_volume_is_not_found(controller):
    err = rpc_error(lambda r: validate(controller, "eddy-" + "0" * 32), None)
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_validate_missing_fields_is_invalid(controller):
    volume = controller.CreateVolume(create_request()).volume
    for request in (csi_pb2.ValidateVolumeCapabilitiesRequest(
                        volume_capabilities=[mount_capability()]),
                    csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id=volume.volume_id)):
        err = rpc_error(controller.ValidateVolumeCapabilities, request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_validate_confirms_mount_and_matching_parameters(controller):
    volume = controller.CreateVolume(create_request(required=GiB)).volume
    reply = validate(controller, volume.volume_id, params=PARAMS, context=volume.volume_context)
    assert reply.HasField("confirmed"), reply.message
    assert dict(reply.confirmed.volume_context) == dict(volume.volume_context)
    assert dict(reply.confirmed.parameters) == PARAMS
    assert list(reply.confirmed.volume_capabilities) == [mount_capability()]


@pytest.mark.parametrize("capabilities, params, message", [
    ([block_capability()], None, "filesystems only"),
    (None, {"source": "local:///elsewhere"}, "different parameters"),
    (None, {"source": "ftp://x"}, "source"),
])
def test_validate_does_not_confirm_what_it_cannot_serve(controller, capabilities, params,
                                                        message):
    volume = controller.CreateVolume(create_request()).volume
    reply = validate(controller, volume.volume_id, capabilities, params)
    assert not reply.HasField("confirmed")
    assert message in reply.message


# --- ListVolumes --------------------------------------------------------------------------


def test_list_pages_cover_every_volume_exactly_once(controller):
    created = {controller.CreateVolume(create_request(f"pvc-{i}")).volume.volume_id
               for i in range(5)}
    seen, pages, token = [], 0, ""
    while True:
        reply = controller.ListVolumes(
            csi_pb2.ListVolumesRequest(max_entries=2, starting_token=token))
        pages += 1
        assert len(reply.entries) <= 2
        for entry in reply.entries:
            assert entry.volume.volume_context["source"] == "local:///data"
            seen.append(entry.volume.volume_id)
        token = reply.next_token
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == sorted(created)
    everything = controller.ListVolumes(csi_pb2.ListVolumesRequest())
    assert {e.volume.volume_id for e in everything.entries} == created
    assert not everything.next_token


def test_list_token_survives_deletion_of_its_volume(controller):
    for i in range(3):
        controller.CreateVolume(create_request(f"pvc-{i}"))
    first = controller.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=1))
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=first.next_token))
    rest = controller.ListVolumes(csi_pb2.ListVolumesRequest(starting_token=first.next_token))
    assert len(rest.entries) == 2


def test_list_bad_arguments(controller):
    err = rpc_error(controller.ListVolumes, csi_pb2.ListVolumesRequest(max_entries=-1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = rpc_error(controller.ListVolumes,
                    csi_pb2.ListVolumesRequest(starting_token="invalid-token"))
    assert err.code() == grpc.StatusCode.ABORTED


# --- capabilities, capacity, the rest -----------------------------------------------------


def test_controller_capabilities_are_what_is_implemented(controller):
    reply = controller.ControllerGetCapabilities(csi_pb2.ControllerGetCapabilitiesRequest())
    assert sorted(c.rpc.type for c in reply.capabilities) == sorted(
        [RPC.CREATE_DELETE_VOLUME, RPC.LIST_VOLUMES, RPC.GET_CAPACITY])


def test_get_capacity(controller, state_dir, tmp_path):
    assert controller.GetCapacity(csi_pb2.GetCapacityRequest()).available_capacity == 100 * GiB
    reply = controller.GetCapacity(csi_pb2.GetCapacityRequest(
        volume_capabilities=[mount_capability()], parameters=PARAMS))
    assert reply.available_capacity == 100 * GiB
    reply = controller.GetCapacity(csi_pb2.GetCapacityRequest(
        volume_capabilities=[block_capability()]))
    assert reply.available_capacity == 0
    err = rpc_error(controller.GetCapacity,
                    csi_pb2.GetCapacityRequest(parameters={"readAhead": "lots"}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    with Controller(tmp_path / "other", capacity=None) as other:
        assert other.GetCapacity(csi_pb2.GetCapacityRequest()).available_capacity == 0


@pytest.mark.expect_error_log("Exception calling application: Method not implemented!")
def test_unimplemented_calls_say_so(controller):
    err = rpc_error(controller.ControllerPublishVolume,
                    csi_pb2.ControllerPublishVolumeRequest(volume_id="eddy-x", node_id="n"))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


# --- state --------------------------------------------------------------------------------


def test_volumes_survive_a_restart(state_dir):
    with Controller(state_dir) as stub:
        volume = stub.CreateVolume(create_request(required=GiB)).volume
    with Controller(state_dir) as stub:
        assert stub.CreateVolume(create_request(required=GiB)).volume == volume
        listed = stub.ListVolumes(csi_pb2.ListVolumesRequest()).entries
        assert [e.volume for e in listed] == [volume]
        assert validate(stub, volume.volume_id).HasField("confirmed")
    db = state_dir / "controller.db"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
