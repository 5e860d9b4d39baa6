"""Which paths are mounts, and the bind/unmount calls the node service needs.

The mount table is read from /proc/self/mountinfo (`eddy.mounttable`) rather than by stat(),
because a FUSE mount whose daemon died answers stat() with ENOTCONN ("transport endpoint is not
connected") and must still be recognised - and removed - as a mount.
"""

from __future__ import annotations

import os
import subprocess

from eddy.errors import EddyError
from eddy.mounttable import MountInfo, mount_table


class MountError(EddyError):
    """A mount or unmount command failed; the message carries the command's own words."""


def find_mount(path: str) -> MountInfo | None:
    """The topmost mount at exactly `path`, or None."""
    path = os.path.realpath(path) if os.path.lexists(path) else os.path.normpath(path)
    found = None
    for entry in mount_table():
        if entry.mount_point == path:
            found = entry  # later lines are mounted on top of earlier ones
    return found


def is_mount_point(path: str) -> bool:
    return find_mount(path) is not None


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise MountError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def bind_mount(source: str, target: str, read_only: bool) -> None:
    """Bind `source` onto `target`; read-only binds are remounted ro (a bind ignores -o ro)."""
    _run("mount", "--bind", source, target)
    if read_only:
        try:
            _run("mount", "-o", "remount,bind,ro", target)
        except MountError:
            unmount(target)
            raise


def unmount(path: str, lazy: bool = False) -> None:
    """Unmount `path`; lazy detaches a busy or dead mount so no caller ever hangs on it."""
    args = ["umount"]
    if lazy:
        args.append("-l")
    _run(*args, path)


def unmount_all(path: str) -> None:
    """Remove every mount stacked at `path`, lazily when a plain unmount fails."""
    while is_mount_point(path):
        try:
            unmount(path)
        except MountError:
            unmount(path, lazy=True)
