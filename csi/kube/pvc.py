"""pvc:// sources: a PersistentVolumeClaim's bound PersistentVolume, as a source nodes can read.

`pvc://namespace/name[/subdir]` is resolved by the controller at CreateVolume, once: the claim
must be Bound, and its PV must be one of the kinds a node can read without another driver:

    hostPath, local  ->  local:///<pv path>/<subdir>   (read on the node, like any local:// source)
    nfs              ->  nfs://<server><path>/<subdir> (the node plugin mounts the export, ro)

Any other kind (a CSI volume, iSCSI, a cloud disk, ...) is refused with INVALID_ARGUMENT naming
the PV's kind: its data is only reachable by attaching it through its own driver. The resolved
source is what the volume records and returns as volume_context, so nodes need no API access
and the cache identity is the data's real location (two claims on one export share blocks).
"""

from __future__ import annotations

import dataclasses
import posixpath

from cache_engine.source import Source, parse_source
from cache_engine.spec import DatasetSpec
from eddy.base.errors import FailedPrecondition, InvalidArgument, NotFound

from .api import REQUEST_TIMEOUT, LazyCoreApi, api_errors

SUPPORTED = "hostPath, local and nfs"
# PersistentVolumeSpec fields that describe the volume rather than say where its data lives.
NOT_A_KIND = frozenset({
    "access_modes", "capacity", "claim_ref", "mount_options", "node_affinity",
    "persistent_volume_reclaim_policy", "storage_class_name", "volume_attributes_class_name",
    "volume_mode",
})


class PvcResolver:
    """Turns a pvc:// DatasetSpec into one whose source is the bound PV's data location."""

    def __init__(self, api: LazyCoreApi) -> None:
        self._api = api

    def __call__(self, spec: DatasetSpec) -> DatasetSpec:
        if spec.source.scheme != "pvc":
            return spec
        resolved = self.resolve(spec.source)
        return dataclasses.replace(spec, source=parse_source(resolved))

    def resolve(self, source: Source) -> str:
        """The local:// or nfs:// URI that `source` (a pvc:// Source) reads."""
        namespace = source.bucket
        name, _, subdir = source.root.partition("/")
        claim = f"PVC {namespace}/{name}"
        try:
            with api_errors(f"reading {claim}"):
                pvc = self._api.core().read_namespaced_persistent_volume_claim(
                    name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except NotFound:
            raise FailedPrecondition(f"source {source.uri}: {claim} does not exist") from None
        volume_name = pvc.spec.volume_name if pvc.spec else None
        phase = pvc.status.phase if pvc.status else None
        if phase != "Bound" or not volume_name:
            raise FailedPrecondition(f"source {source.uri}: {claim} is not bound to a "
                                     f"PersistentVolume (phase {phase or 'unknown'})")
        with api_errors(f"reading PV {volume_name} of {claim}"):
            pv = self._api.core().read_persistent_volume(volume_name,
                                                         _request_timeout=REQUEST_TIMEOUT)
        return source_of(pv, subdir, claim)


def source_of(pv, subdir: str = "", claim: str = "the claim") -> str:
    """The source URI of a `V1PersistentVolume`'s data, `subdir` below its root."""
    spec = pv.spec
    if spec.host_path is not None:
        return "local://" + _join(spec.host_path.path, subdir)
    if spec.local is not None:
        return "local://" + _join(spec.local.path, subdir)
    if spec.nfs is not None:
        server = spec.nfs.server
        if ":" in server and not server.startswith("["):
            server = f"[{server}]"  # an IPv6 address
        return f"nfs://{server}" + _join(spec.nfs.path, subdir)
    raise InvalidArgument(f"{claim} is bound to PV {pv.metadata.name}, a {kind_of(spec)} "
                          f"volume; pvc:// sources support {SUPPORTED} PersistentVolumes")


def kind_of(spec) -> str:
    """The PV's volume kind as Kubernetes spells it ("cephfs", "csi (driver x)"), for messages."""
    names = getattr(type(spec), "attribute_map", {})
    for field, value in _fields(spec):
        if field in NOT_A_KIND or value is None:
            continue
        kind = names.get(field, field)
        if field == "csi":
            return f"csi (driver {value.driver})"
        return kind
    return "unknown"


def _fields(spec):
    fields = getattr(type(spec), "model_fields", None) or getattr(spec, "openapi_types", {})
    return [(field, getattr(spec, field, None)) for field in fields]


def _join(root: str, subdir: str) -> str:
    if not root or not root.startswith("/"):
        raise InvalidArgument(f"the PersistentVolume's path {root!r} is not absolute")
    return posixpath.normpath(posixpath.join(root, subdir)) if subdir else root
