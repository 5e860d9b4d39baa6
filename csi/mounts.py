"""Which paths are mounts, and the bind/unmount calls the node service needs.

The mount table is read from /proc/self/mountinfo (`eddy.base.mounttable`) rather than by stat(),
because a FUSE mount whose daemon died answers stat() with ENOTCONN ("transport endpoint is not
connected") and must still be recognised - and removed - as a mount.
"""

from __future__ import annotations

from eddy.base import mounttable
from eddy.base.errors import EddyError
from eddy.base.mounttable import MountInfo, mount_at


class MountError(EddyError):
    """A mount or unmount command failed; the message carries the command's own words."""


def find_mount(path: str) -> MountInfo | None:
    """The topmost mount at exactly `path`, or None (without asking the mount itself)."""
    return mount_at(path)


def is_mount_point(path: str) -> bool:
    return find_mount(path) is not None


def foreign_mount(path: str, fsname: str) -> str | None:
    """What is mounted at `path` if it is not a view of the FUSE connection named `fsname`
    ("fstype source"), or None when nothing is, or it is that connection's."""
    found = find_mount(path)
    if found is None or (found.fstype == "fuse.eddy" and found.source == fsname):
        return None
    return f"{found.fstype} {found.source}"


def bind_mount(source: str, target: str, read_only: bool) -> None:
    """Bind `source` onto `target`; read-only binds are remounted ro (a bind ignores MS_RDONLY)."""
    try:
        mounttable.mount(source, target, None, mounttable.MS_BIND)
    except OSError as e:
        raise MountError(f"bind mount of {source} on {target} failed: {e.strerror}") from None
    if read_only:
        entry = find_mount(target)
        flags = mounttable.remount_flags(entry) if entry is not None else 0
        try:
            mounttable.mount("none", target, None, mounttable.MS_REMOUNT | mounttable.MS_BIND
                             | mounttable.MS_RDONLY | flags)
        except OSError as e:
            unmount(target)
            raise MountError(f"read-only remount of {target} failed: {e.strerror}") from None


def unmount(path: str, lazy: bool = False) -> None:
    """Unmount `path`; lazy detaches a busy or dead mount so no caller ever hangs on it."""
    try:
        mounttable.umount(path, mounttable.MNT_DETACH if lazy else 0)
    except OSError as e:
        raise MountError(f"unmount of {path} failed: {e.strerror}") from None


def unmount_all(path: str) -> None:
    """Remove every mount stacked at `path`, lazily when a plain unmount fails."""
    while (entry := find_mount(path)) is not None:
        try:
            unmount(entry.mount_point)
        except MountError:
            unmount(entry.mount_point, lazy=True)
