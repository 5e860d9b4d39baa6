"""The kernel's mount table (/proc/self/mountinfo), for every layer that needs to know what is
mounted where: the node service (csi.mounts) and the cache engine (which tiers are in RAM)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountInfo:
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
