"""The checks of CSI request fields that the controller and the node share.

Each raises InvalidArgument naming the field as the CSI spec spells it, before any work is
done. The limits (README "Volume parameters") are chosen against where the values end up:

- a volume id is at most 128 bytes, the CSI spec's size of a string field: eddy's own ids have
  37 bytes, kubelet's ids of inline volumes 68, and the node makes file names of them;
- a volume name is at most 256 bytes: the external-provisioner's have 40 (`pvc-<uuid>`); a
  name is recorded in a ConfigMap by the Kubernetes state store, and one over its 1 MiB used
  to be retried there forever;
- a path is absolute, at most PATH_MAX (4096) bytes, each component at most NAME_MAX (255);
- none may hold a control character: ids end on command lines (where a NUL cannot) and paths
  in mount(2).
"""

from __future__ import annotations

import os

from cache_engine.spec import DatasetSpec
from eddy.base.errors import InvalidArgument, InvalidParameter
from eddy.base.limits import path_problem, text_problem
from eddy.base.pb import csi_pb2
from eddy.base.rpc import require

MAX_VOLUME_ID = 128
MAX_NAME = 256
FILESYSTEMS_ONLY = "eddy serves filesystems only (mount access type), not block devices"
UNKNOWN_MODE = csi_pb2.VolumeCapability.AccessMode.UNKNOWN


def volume_id(request) -> str:
    """The request's `volume_id`: required, at most MAX_VOLUME_ID bytes, printable, and
    nothing a path or a command line could take for something else (`/`, `..`, a leading `-`)."""
    value = _text(request, "volume_id", MAX_VOLUME_ID)
    if "/" in value or ".." in value or value.startswith("-"):
        raise InvalidArgument(f"volume_id {value!r} may not contain '/' or '..' nor start "
                              f"with '-'")
    return value


def name(request) -> str:
    """CreateVolume's `name`: required, at most MAX_NAME bytes, printable."""
    return _text(request, "name", MAX_NAME)


def _text(request, field: str, limit: int) -> str:
    require(request, field)
    value = getattr(request, field)
    problem = text_problem(value, limit)
    if problem:
        raise InvalidArgument(f"{field} {problem}")
    return value


def path(request, field: str, root: str | None = None) -> str:
    """The request's path `field`, required and absolute, normalised (no trailing slash), and
    beneath `root` (kubelet's directory) when given, its parent's real path too: a CO names
    paths in its own directory, and the node plugin mounts over whatever it is told."""
    require(request, field)
    value = getattr(request, field)
    problem = path_problem(value)
    if problem:
        raise InvalidArgument(f"{field} {problem}")
    value = os.path.normpath(value)
    if root is not None:
        root = os.path.normpath(root)
        parent = os.path.realpath(os.path.dirname(value))
        if not (value.startswith(root.rstrip("/") + "/")
                and _beneath(parent, os.path.realpath(root))):
            raise InvalidArgument(f"{field} {value} is not under the kubelet directory {root} "
                                  f"(eddy serve --kubelet-dir)")
    return value


def _beneath(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def capability(request) -> None:
    """The node's `volume_capability`: required, and one eddy can serve."""
    require(request, "volume_capability")
    problem = capability_problem(request.volume_capability, "volume_capability")
    if problem:
        raise InvalidArgument(problem)


def capabilities_problem(capabilities) -> str:
    """Why these `volume_capabilities` cannot be served ("" if they can): mount access only."""
    for i, cap in enumerate(capabilities):
        problem = capability_problem(cap, f"volume_capabilities[{i}]")
        if problem:
            return problem
    return ""


def capability_problem(cap: csi_pb2.VolumeCapability, field: str) -> str:
    if cap.HasField("block"):
        return f"{field}: {FILESYSTEMS_ONLY}"
    if not cap.HasField("mount"):
        return f"{field}: access_type is required (mount)"
    if cap.access_mode.mode == UNKNOWN_MODE:
        return f"{field}: access_mode is required"
    return ""


_READER_ONLY = (csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY,
                csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY)


def writable(cap: csi_pb2.VolumeCapability, volume_context) -> bool:
    """Whether a volume staged with `cap` is mounted read-write: a writer access mode over a
    directory source (local://, which hostPath and local claims resolve to; nfs://, which NFS
    claims resolve to) or a bucket (s3://). http(s):// sources stay read-only in any mode
    (writes answer EROFS; README "Writable volumes")."""
    return cap.access_mode.mode not in _READER_ONLY and \
        volume_context.get("source", "").startswith(("local://", "nfs://", "s3://"))


def node_tiers(spec: DatasetSpec, node_id: str, tier_names: tuple[str, ...]) -> None:
    """Refuse a volume whose `tiers` parameter names a tier this node does not have.

    The controller cannot know a node's tiers, so CreateVolume accepts any tier name; the
    node refuses at NodeStageVolume (no tier names: a node that does not say, accept)."""
    unknown = [t for t in spec.tiers if tier_names and t not in tier_names]
    if unknown:
        raise InvalidParameter("tiers", f"{', '.join(map(repr, unknown))} "
                               f"{'is not a tier' if len(unknown) == 1 else 'are not tiers'} "
                               f"of node {node_id} (its tiers: {', '.join(tier_names)})")


def local_source(spec: DatasetSpec, allowed: tuple[str, ...]) -> None:
    """Refuse a local:// source (a hostPath pvc:// resolves to one) outside the directories the
    node serves local sources from (`eddy serve --local-allow`; none given: any directory)."""
    if spec.source.scheme != "local" or not allowed:
        return
    root = spec.source.root
    if not any(_beneath(root, d) for d in allowed):
        raise InvalidParameter("source", f"{spec.source.shown} is outside the directories this "
                               f"node serves local sources from (--local-allow: "
                               f"{', '.join(allowed)})")
