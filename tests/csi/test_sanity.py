"""What the CSI spec requires of the Identity and Node RPCs, in the spirit of csi-sanity.

Runs against the real `eddy serve --mode all` over its socket. The controller's share of the
sanity checks lives in test_controller.py.
"""

from __future__ import annotations

import os

import grpc
import pytest

from eddy import __version__
from eddy.base.pb import csi_pb2
from tests.support.driver import DriverProcess, cleanup_mounts, mount_capability

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sanity")
    drv = DriverProcess(str(workdir)).start()
    yield drv
    drv.stop()
    cleanup_mounts(str(workdir))


def code_of(call, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call(request)
    return err.value.code()


def test_identity(driver):
    info = driver.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert info.name == "eddy.csi.io"
    assert info.vendor_version == __version__
    caps = driver.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())
    services = {c.service.type for c in caps.capabilities}
    assert services == {csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE}
    assert driver.identity.Probe(csi_pb2.ProbeRequest()).ready.value


def test_node_info_and_capabilities(driver):
    info = driver.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
    assert info.node_id == "test-node"
    assert not info.HasField("accessible_topology")
    caps = driver.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest())
    rpc = csi_pb2.NodeServiceCapability.RPC
    assert {c.rpc.type for c in caps.capabilities} == {
        rpc.STAGE_UNSTAGE_VOLUME, rpc.GET_VOLUME_STATS, rpc.VOLUME_CONDITION}


STAGE_OK = dict(volume_id="v1", staging_target_path="/tmp/eddy-sanity-staging",
                volume_capability=mount_capability(),
                volume_context={"source": "local:///tmp"})


@pytest.mark.parametrize("missing", ["volume_id", "staging_target_path", "volume_capability"])
def test_stage_missing_field(driver, missing):
    fields = {k: v for k, v in STAGE_OK.items() if k != missing}
    assert code_of(driver.node.NodeStageVolume,
                   csi_pb2.NodeStageVolumeRequest(**fields)) == Code.INVALID_ARGUMENT


def test_stage_block_capability_refused(driver):
    cap = csi_pb2.VolumeCapability(
        block=csi_pb2.VolumeCapability.BlockVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))
    req = csi_pb2.NodeStageVolumeRequest(**{**STAGE_OK, "volume_capability": cap})
    assert code_of(driver.node.NodeStageVolume, req) == Code.INVALID_ARGUMENT


def test_stage_bad_parameters_refused_and_nothing_mounted(driver, tmp_path):
    staging = str(tmp_path / "staging")
    for context in ({"source": "local://relative"}, {"source": "local:///x", "colour": "red"}):
        req = csi_pb2.NodeStageVolumeRequest(**{**STAGE_OK, "staging_target_path": staging,
                                                "volume_context": context})
        with pytest.raises(grpc.RpcError) as err:
            driver.node.NodeStageVolume(req)
        assert err.value.code() == Code.INVALID_ARGUMENT
        assert "source" in err.value.details() or "colour" in err.value.details()
    assert not os.path.exists(staging)


def test_stage_missing_source_directory_is_an_error_with_nothing_left(driver, tmp_path):
    staging = str(tmp_path / "staging")
    req = csi_pb2.NodeStageVolumeRequest(**{
        **STAGE_OK, "staging_target_path": staging,
        "volume_context": {"source": "local:///does/not/exist"}})
    with pytest.raises(grpc.RpcError) as err:
        driver.node.NodeStageVolume(req)
    assert "/does/not/exist" in err.value.details()
    assert not os.path.ismount(staging)


@pytest.mark.parametrize("missing", ["volume_id", "staging_target_path", "target_path",
                                     "volume_capability"])
def test_publish_missing_field(driver, missing):
    fields = dict(volume_id="v1", staging_target_path="/tmp/s", target_path="/tmp/t",
                  volume_capability=mount_capability())
    del fields[missing]
    assert code_of(driver.node.NodePublishVolume,
                   csi_pb2.NodePublishVolumeRequest(**fields)) == Code.INVALID_ARGUMENT


def test_publish_unknown_volume_is_not_found(driver, tmp_path):
    req = csi_pb2.NodePublishVolumeRequest(
        volume_id="no-such-volume", staging_target_path=str(tmp_path / "s"),
        target_path=str(tmp_path / "t"), volume_capability=mount_capability())
    assert code_of(driver.node.NodePublishVolume, req) == Code.NOT_FOUND


@pytest.mark.parametrize("missing", ["volume_id", "target_path"])
def test_unpublish_missing_field(driver, missing):
    fields = dict(volume_id="v1", target_path="/tmp/t")
    del fields[missing]
    assert code_of(driver.node.NodeUnpublishVolume,
                   csi_pb2.NodeUnpublishVolumeRequest(**fields)) == Code.INVALID_ARGUMENT


@pytest.mark.parametrize("missing", ["volume_id", "staging_target_path"])
def test_unstage_missing_field(driver, missing):
    fields = dict(volume_id="v1", staging_target_path="/tmp/s")
    del fields[missing]
    assert code_of(driver.node.NodeUnstageVolume,
                   csi_pb2.NodeUnstageVolumeRequest(**fields)) == Code.INVALID_ARGUMENT


def test_unstage_and_unpublish_of_unknown_volume_succeed(driver, tmp_path):
    driver.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
        volume_id="gone", target_path=str(tmp_path / "t")))
    driver.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
        volume_id="gone", staging_target_path=str(tmp_path / "s")))


@pytest.mark.parametrize("missing", ["volume_id", "volume_path"])
def test_volume_stats_missing_field(driver, missing):
    fields = dict(volume_id="v1", volume_path="/tmp/t")
    del fields[missing]
    assert code_of(driver.node.NodeGetVolumeStats,
                   csi_pb2.NodeGetVolumeStatsRequest(**fields)) == Code.INVALID_ARGUMENT


def test_volume_stats_unknown_volume_is_not_found(driver):
    req = csi_pb2.NodeGetVolumeStatsRequest(volume_id="nope",
                                            volume_path=f"{driver.kubelet_dir}/nope")
    assert code_of(driver.node.NodeGetVolumeStats, req) == Code.NOT_FOUND


def test_concurrent_stage_of_one_volume_gets_aborted_or_succeeds(driver, tmp_path):
    """Two stages of one volume at once: each is OK or ABORTED, and one mount results."""
    import concurrent.futures

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    staging = str(tmp_path / "staging")
    req = csi_pb2.NodeStageVolumeRequest(
        volume_id="concurrent", staging_target_path=staging,
        volume_capability=mount_capability(), volume_context={"source": f"local://{src}"})

    def stage():
        try:
            driver.node.NodeStageVolume(req)
            return Code.OK
        except grpc.RpcError as e:
            return e.code()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: stage(), range(4)))
    assert set(codes) <= {Code.OK, Code.ABORTED} and Code.OK in codes
    with open(os.path.join(staging, "f"), "rb") as f:
        assert f.read() == b"data"
    driver.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
        volume_id="concurrent", staging_target_path=staging))
    assert not os.path.ismount(staging)
