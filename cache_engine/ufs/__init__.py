"""Source backends and the one factory that picks one from a DatasetSpec."""

from __future__ import annotations

from ..spec import DatasetSpec
from .base import Entry, Kind, UfsBackend, UfsUnavailable, VersionChanged
from .redirects import SAME_ORIGIN, RedirectPolicy

__all__ = ["Entry", "Kind", "RedirectPolicy", "UfsBackend", "UfsUnavailable", "VersionChanged",
           "open_ufs"]


def open_ufs(spec: DatasetSpec, secrets: dict[str, str] | None = None,
             redirects: RedirectPolicy = SAME_ORIGIN) -> UfsBackend:
    """The backend for `spec.source`; `secrets` holds the node-stage secret's keys;
    `redirects` is the node's rule for where an http(s) source may be redirected."""
    scheme = spec.source.scheme
    if scheme == "local":
        from .local import LocalUfs

        return LocalUfs(spec.source.root)
    if scheme == "s3":
        from .s3 import S3Ufs

        return S3Ufs(spec, secrets or {})
    if scheme in ("http", "https"):
        from .http import HttpUfs

        return HttpUfs(spec, secrets or {}, redirects=redirects)
    if scheme == "pvc":
        raise UfsUnavailable("pvc:// sources are resolved to their PersistentVolume by the CSI "
                             "controller at CreateVolume; use them in a StorageClass")
    if scheme == "nfs":
        raise UfsUnavailable("nfs:// sources are mounted by the node plugin; outside Kubernetes, "
                             "mount the export yourself and read it as local:///path")
    raise UfsUnavailable(f"source scheme {scheme!r} is not supported by this node yet")
