"""Generated protobuf code is fresh, and csi.proto keeps the upstream CSI wire contract.

Why: eddy/base/pb is checked in and produced by `make proto`; a .proto edited without regenerating
ships a driver whose code disagrees with its own schema. And csi.proto is a copy of the upstream
spec: a renumbered or retyped field still compiles but silently breaks every CO and sidecar.
"""

import contextlib
import importlib.resources
import io
from pathlib import Path

import pytest
from google.protobuf import descriptor as pbd

from eddy.base.pb import csi_pb2

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
PB_DIR = ROOT / "eddy" / "base" / "pb"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

F = pbd.FieldDescriptor


def _protos() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def _regenerate(out: Path) -> None:
    """Run protoc in-process exactly as `make proto` does, writing into `out`."""
    from grpc_tools import protoc

    bundled = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-Ieddy/base/pb={PROTO_DIR}",
        f"-I{bundled}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p) for p in _protos()),
    ]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        rc = protoc.main(args)
    assert rc == 0, f"protoc failed ({rc}): {stderr.getvalue()}"


# --- (a) freshness ----------------------------------------------------------------------------


def test_every_proto_has_generated_modules():
    assert _protos(), f"no .proto files under {PROTO_DIR}"
    missing = [
        f"eddy/base/pb/{p.stem}{suffix}"
        for p in _protos()
        for suffix in GENERATED_SUFFIXES
        if not (PB_DIR / f"{p.stem}{suffix}").is_file()
    ]
    assert not missing, f"generated code missing, run make proto: {missing}"


def test_no_generated_module_without_a_proto():
    stems = {p.stem for p in _protos()}
    orphans = [
        f.name
        for f in PB_DIR.iterdir()
        if f.name.endswith(GENERATED_SUFFIXES) and f.name.split("_pb2")[0] not in stems
    ]
    assert not orphans, (
        f"generated code whose .proto is gone, delete it and run make proto: {orphans}"
    )


def test_generated_code_is_fresh(tmp_path):
    _regenerate(tmp_path)
    fresh_dir = tmp_path / "eddy" / "base" / "pb"
    stale = []
    for p in _protos():
        for suffix in GENERATED_SUFFIXES:
            name = f"{p.stem}{suffix}"
            fresh = (fresh_dir / name).read_bytes()
            checked_in = PB_DIR / name
            if not checked_in.is_file() or checked_in.read_bytes() != fresh:
                stale.append(f"eddy/base/pb/{name}")
    assert not stale, f"generated code is stale, run make proto: {stale}"


# --- (b) wire facts, numbers as in upstream csi.proto (CSI spec v1.x) ------------------------


def _fields(message: str) -> dict[str, tuple[int, int]]:
    desc = csi_pb2.DESCRIPTOR.message_types_by_name[message]
    return {f.name: (f.number, f.type) for f in desc.fields}


def test_package_is_csi_v1():
    assert csi_pb2.DESCRIPTOR.package == "csi.v1"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "CreateVolumeRequest",
            {
                "name": (1, F.TYPE_STRING),
                "capacity_range": (2, F.TYPE_MESSAGE),
                "volume_capabilities": (3, F.TYPE_MESSAGE),
                "parameters": (4, F.TYPE_MESSAGE),
                "secrets": (5, F.TYPE_MESSAGE),
                "volume_content_source": (6, F.TYPE_MESSAGE),
                "accessibility_requirements": (7, F.TYPE_MESSAGE),
                "mutable_parameters": (8, F.TYPE_MESSAGE),
            },
        ),
        (
            "Volume",
            {
                "capacity_bytes": (1, F.TYPE_INT64),
                "volume_id": (2, F.TYPE_STRING),
                "volume_context": (3, F.TYPE_MESSAGE),
                "content_source": (4, F.TYPE_MESSAGE),
                "accessible_topology": (5, F.TYPE_MESSAGE),
            },
        ),
        (
            "NodeStageVolumeRequest",
            {
                "volume_id": (1, F.TYPE_STRING),
                "publish_context": (2, F.TYPE_MESSAGE),
                "staging_target_path": (3, F.TYPE_STRING),
                "volume_capability": (4, F.TYPE_MESSAGE),
                "secrets": (5, F.TYPE_MESSAGE),
                "volume_context": (6, F.TYPE_MESSAGE),
            },
        ),
        (
            "NodePublishVolumeRequest",
            {
                "volume_id": (1, F.TYPE_STRING),
                "publish_context": (2, F.TYPE_MESSAGE),
                "staging_target_path": (3, F.TYPE_STRING),
                "target_path": (4, F.TYPE_STRING),
                "volume_capability": (5, F.TYPE_MESSAGE),
                "readonly": (6, F.TYPE_BOOL),
                "secrets": (7, F.TYPE_MESSAGE),
                "volume_context": (8, F.TYPE_MESSAGE),
            },
        ),
        (
            "NodeGetInfoResponse",
            {
                "node_id": (1, F.TYPE_STRING),
                "max_volumes_per_node": (2, F.TYPE_INT64),
                "accessible_topology": (3, F.TYPE_MESSAGE),
            },
        ),
        (
            "VolumeCapability",
            {
                "block": (1, F.TYPE_MESSAGE),
                "mount": (2, F.TYPE_MESSAGE),
                "access_mode": (3, F.TYPE_MESSAGE),
            },
        ),
    ],
)
def test_field_numbers_and_types_match_upstream(message, expected):
    assert _fields(message) == expected


def test_map_fields_are_string_maps():
    for message, field in [
        ("CreateVolumeRequest", "parameters"),
        ("CreateVolumeRequest", "secrets"),
        ("NodeStageVolumeRequest", "volume_context"),
        ("NodeStageVolumeRequest", "secrets"),
    ]:
        entry = csi_pb2.DESCRIPTOR.message_types_by_name[message].fields_by_name[field].message_type
        assert entry.GetOptions().map_entry, f"{message}.{field} is not a map"
        assert [(f.name, f.number, f.type) for f in entry.fields] == [
            ("key", 1, F.TYPE_STRING),
            ("value", 2, F.TYPE_STRING),
        ]


def _enum(enum_type) -> dict[str, int]:
    return {v.name: v.number for v in enum_type.DESCRIPTOR.values}


def test_access_modes_match_upstream():
    assert _enum(csi_pb2.VolumeCapability.AccessMode.Mode) == {
        "UNKNOWN": 0,
        "SINGLE_NODE_WRITER": 1,
        "SINGLE_NODE_READER_ONLY": 2,
        "MULTI_NODE_READER_ONLY": 3,
        "MULTI_NODE_SINGLE_WRITER": 4,
        "MULTI_NODE_MULTI_WRITER": 5,
        "SINGLE_NODE_SINGLE_WRITER": 6,
        "SINGLE_NODE_MULTI_WRITER": 7,
    }


def test_plugin_service_types_match_upstream():
    assert _enum(csi_pb2.PluginCapability.Service.Type) == {
        "UNKNOWN": 0,
        "CONTROLLER_SERVICE": 1,
        "VOLUME_ACCESSIBILITY_CONSTRAINTS": 2,
        "GROUP_CONTROLLER_SERVICE": 3,
        "SNAPSHOT_METADATA_SERVICE": 4,
    }


def test_capability_rpc_types_match_upstream():
    controller = _enum(csi_pb2.ControllerServiceCapability.RPC.Type)
    assert controller["CREATE_DELETE_VOLUME"] == 1
    assert controller["PUBLISH_UNPUBLISH_VOLUME"] == 2
    assert controller["LIST_VOLUMES"] == 3
    assert controller["GET_CAPACITY"] == 4
    assert controller["EXPAND_VOLUME"] == 9
    assert controller["GET_VOLUME"] == 12
    assert controller["MODIFY_VOLUME"] == 14
    assert _enum(csi_pb2.NodeServiceCapability.RPC.Type) == {
        "UNKNOWN": 0,
        "STAGE_UNSTAGE_VOLUME": 1,
        "GET_VOLUME_STATS": 2,
        "EXPAND_VOLUME": 3,
        "VOLUME_CONDITION": 4,
        "SINGLE_NODE_MULTI_WRITER": 5,
        "VOLUME_MOUNT_GROUP": 6,
    }


def test_services_and_methods_match_upstream():
    services = {
        s.name: [(m.name, m.server_streaming) for m in s.methods]
        for s in csi_pb2.DESCRIPTOR.services_by_name.values()
    }
    assert services == {
        "Identity": [
            ("GetPluginInfo", False),
            ("GetPluginCapabilities", False),
            ("Probe", False),
        ],
        "Controller": [
            ("CreateVolume", False),
            ("DeleteVolume", False),
            ("ControllerPublishVolume", False),
            ("ControllerUnpublishVolume", False),
            ("ValidateVolumeCapabilities", False),
            ("ListVolumes", False),
            ("GetCapacity", False),
            ("ControllerGetCapabilities", False),
            ("CreateSnapshot", False),
            ("DeleteSnapshot", False),
            ("ListSnapshots", False),
            ("ControllerExpandVolume", False),
            ("ControllerGetVolume", False),
            ("ControllerModifyVolume", False),
        ],
        "GroupController": [
            ("GroupControllerGetCapabilities", False),
            ("CreateVolumeGroupSnapshot", False),
            ("DeleteVolumeGroupSnapshot", False),
            ("GetVolumeGroupSnapshot", False),
        ],
        "SnapshotMetadata": [
            ("GetMetadataAllocated", True),
            ("GetMetadataDelta", True),
        ],
        "Node": [
            ("NodeStageVolume", False),
            ("NodeUnstageVolume", False),
            ("NodePublishVolume", False),
            ("NodeUnpublishVolume", False),
            ("NodeGetVolumeStats", False),
            ("NodeExpandVolume", False),
            ("NodeGetCapabilities", False),
            ("NodeGetInfo", False),
        ],
    }


def test_staging_path_encodes_as_field_3():
    # Tag 0x1a = field 3, length-delimited: what a kubelet actually puts on the wire.
    wire = csi_pb2.NodeStageVolumeRequest(staging_target_path="/s").SerializeToString()
    assert wire == b"\x1a\x02/s"


# --- (c) secrets are annotated, so redaction can rely on the option ---------------------------


def _all_messages(messages):
    for m in messages:
        yield m
        yield from _all_messages(m.nested_types)


def _secret_fields() -> set[str]:
    return {
        f"{m.name}.{f.name}"
        for m in _all_messages(csi_pb2.DESCRIPTOR.message_types_by_name.values())
        for f in m.fields
        if f.GetOptions().Extensions[csi_pb2.csi_secret]
    }


def test_every_secrets_field_carries_csi_secret():
    secrets_fields = {
        f"{m.name}.{f.name}"
        for m in _all_messages(csi_pb2.DESCRIPTOR.message_types_by_name.values())
        for f in m.fields
        if f.name == "secrets"
    }
    assert {
        "CreateVolumeRequest.secrets",
        "DeleteVolumeRequest.secrets",
        "NodeStageVolumeRequest.secrets",
        "NodePublishVolumeRequest.secrets",
        "NodeExpandVolumeRequest.secrets",
    } <= secrets_fields
    assert _secret_fields() == secrets_fields


def test_csi_secret_is_upstream_extension_1059():
    assert csi_pb2.csi_secret.number == 1059
    assert csi_pb2.alpha_field.number == 1060
