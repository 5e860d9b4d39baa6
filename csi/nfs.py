"""nfs:// sources: the node plugin mounts the export and mount daemons use it as a local directory.

A pvc:// source on an NFS PersistentVolume becomes `nfs://server/export/path` at CreateVolume
(csi/kube/pvc.py). At NodeStageVolume the node turns it into a local:// source under its state
directory, `<state-dir>/nfs/<server>/<export path, %-quoted into one name>`, mounts
`server:/export/path` there with `mount -t nfs -o rw,nolock,soft,timeo=100,retrans=2` (the
kernel's NFS client; `rw` for writer-mode volumes, which write through it, while a reader's
FUSE mount stays read-only; `nolock` because nothing here takes locks and no statd runs in
the plugin's container; `soft` so that a server that died fails a read or a write with an
error after about 30 s instead of holding it forever, as a `hard` mount would), and
only then starts the volume's mount daemon. From there on the volume is an ordinary local://
volume to the daemon, the cache engine and the staging record, so volumes of one export share
its blocks. The directory name alone says which export belongs there, so a restarted plugin
mounts it again (`ensure`) before restarting the daemon. One mount serves every staged volume
of the export; the last one unstaged removes it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Callable, Iterable
from urllib.parse import quote, unquote

from cache_engine.source import parse_source
from cache_engine.spec import DatasetSpec
from eddy.base import log

from . import mounts

MOUNT_OPTIONS = "rw,nolock,soft,timeo=100,retrans=2"  # timeo: tenths of a second


def mount_nfs(export: str, mountpoint: str) -> None:
    """`mount -t nfs -o MOUNT_OPTIONS server:/path MOUNTPOINT` (mount.nfs from nfs-common)."""
    proc = subprocess.run(["mount", "-t", "nfs", "-o", MOUNT_OPTIONS, "--", export, mountpoint],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise mounts.MountError(f"mounting NFS export {export} failed: "
                                f"{proc.stderr.strip() or proc.stdout.strip()}")


class NfsMounts:
    """The node's NFS mounts under `<state-dir>/nfs`; `mount` is injectable for tests."""

    def __init__(self, state_dir: str,
                 mount: Callable[[str, str], None] = mount_nfs) -> None:
        self.dir = os.path.join(os.path.abspath(state_dir), "nfs")
        self._mount = mount
        self._log = log.get("csi.nfs")

    def local_spec(self, spec: DatasetSpec) -> DatasetSpec:
        """`spec` with an nfs:// source replaced by the local directory it is mounted at."""
        if spec.source.scheme != "nfs":
            return spec
        path = os.path.join(self.dir, spec.source.bucket, quote(spec.source.root, safe=""))
        return dataclasses.replace(spec, source=parse_source(f"local://{path}"))

    def export_of(self, parameters: dict[str, str]) -> tuple[str, str] | None:
        """(server:/path, mountpoint) when the volume reads an NFS mount of ours, else None."""
        source = parameters.get("source", "")
        if not source.startswith(f"local://{self.dir}/"):
            return None
        mountpoint = source[len("local://"):]
        server, _, quoted = mountpoint[len(self.dir) + 1:].partition("/")
        if not server or not quoted or "/" in quoted:
            return None
        return f"{server}:{unquote(quoted)}", mountpoint

    def ensure(self, parameters: dict[str, str]) -> None:
        """Mount the volume's export unless it already is (no-op for other sources)."""
        found = self.export_of(parameters)
        if found is None or mounts.is_mount_point(found[1]):
            return
        export, mountpoint = found
        os.makedirs(mountpoint, mode=0o700, exist_ok=True)
        self._mount(export, mountpoint)
        self._log.info("nfs.mounted", export=export, mountpoint=mountpoint)

    def release(self, parameters: dict[str, str], others: Iterable[dict[str, str]]) -> None:
        """Unmount the volume's export unless one of `others` (still staged) reads it too."""
        found = self.export_of(parameters)
        if found is None or any(p.get("source") == parameters["source"] for p in others):
            return
        export, mountpoint = found
        mounts.unmount_all(mountpoint)
        try:
            os.rmdir(mountpoint)
        except OSError:
            pass
        self._log.info("nfs.unmounted", export=export, mountpoint=mountpoint)
