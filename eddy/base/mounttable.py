"""The kernel's mount table (/proc/self/mountinfo), for every layer that needs to know what is
mounted where: the node service (csi.mounts) and the cache engine (which tiers are in RAM);
and the two system calls that change it, mount(2) and umount2(2).

The calls are made directly, not through mount(8) and umount(8): those resolve and stat their
paths first, and a stat of a FUSE mount whose daemon is gone, or has not answered FUSE_INIT
yet, waits for as long as nobody serves it.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_RELATIME = 0x20, 0x400, 0x800, 0x1000, 0x200000
MNT_DETACH = 0x2
_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
          "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
_libc = ctypes.CDLL(None, use_errno=True)

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo: where, what is mounted there, and its device number."""

    mount_point: str
    root: str
    fstype: str
    source: str
    options: frozenset[str]
    device: str  # "major:minor"

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def mount_table(path: str = "/proc/self/mountinfo") -> list[MountInfo]:
    entries = []
    with open(path) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rfields = right.split()
            entries.append(MountInfo(
                mount_point=_unescape(fields[4]),
                root=_unescape(fields[3]),
                fstype=rfields[0],
                source=_unescape(rfields[1]) if len(rfields) > 1 else "",
                options=frozenset(fields[5].split(",")) | frozenset(
                    rfields[2].split(",") if len(rfields) > 2 else ()),
                device=fields[2],
            ))
    return entries


def mount_at(path: str) -> MountInfo | None:
    """The topmost mount at exactly `path`, or None.

    Only the parent directory is resolved: a stat of the path itself would ask the mount's
    filesystem, and a FUSE mount whose connection nobody serves would never answer."""
    parent, name = os.path.split(os.path.abspath(path))
    path = os.path.join(os.path.realpath(parent), name)
    found = None
    for entry in mount_table():
        if entry.mount_point == path:
            found = entry  # later lines are mounted on top of earlier ones
    return found


def mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    """mount(2); OSError with the kernel's errno."""
    if _libc.mount(os.fsencode(source), os.fsencode(target),
                   os.fsencode(fstype) if fstype else None, flags,
                   data.encode() if data else None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)


def umount(target: str, flags: int = 0) -> None:
    """umount2(2); OSError with the kernel's errno."""
    if _libc.umount2(os.fsencode(target), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)


def remount_flags(entry: MountInfo) -> int:
    """The per-mount flags `entry` has, to keep them across a remount of its bind."""
    return sum(flag for name, flag in _FLAGS.items() if name in entry.options)


MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def in_memory(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether `path` is on a filesystem held in RAM (tmpfs, ramfs): its files cannot rot on
    a medium, and a power loss takes them all rather than tearing some. False if unknown."""
    return filesystem_of(path, mountinfo) in MEMORY_FILESYSTEMS


def filesystem_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The type of the filesystem `path` is on ("" if unknown)."""
    real = os.path.realpath(path)
    try:
        mounts = mount_table(mountinfo)
    except OSError:
        return ""
    best, kind = "", ""
    for m in mounts:  # the deepest mount holding `path`; of several there, the last
        point = m.mount_point
        if (real == point or real.startswith(point.rstrip("/") + "/")) \
                and len(point) >= len(best):
            best, kind = point, m.fstype
    return kind
