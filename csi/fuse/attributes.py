"""What the kernel is told about an entry: its type, permission bits, owner, size and times.

The mount is made with `default_permissions`, so the kernel itself checks these bits against
the caller's uid, gid and groups before a request reaches the daemon: what `stat` shows is
what is enforced. A source that has owners and modes (a local directory, hence NFS and
pvc://) shows its own; one that has none (an object store) shows the volume's `uid`, `gid`,
`fileMode` and `dirMode`, by default root's and readable by everyone (files 0444, directories
0555), which is what a bucket means to anyone who may mount it. Given parameters win over the
source's values, so a StorageClass can open or close a hostPath dataset to its pods.

Only the nine permission bits are shown. setuid and setgid on files would be a way in if a
mount were ever bound without nosuid; setgid and sticky on directories govern files created
in them, and nobody creates any here. Write bits are shown as the source has them (`ls -l` on
an NFS claim looks as on the server); writes fail with EROFS unless the volume is writable
(writes.py).
Symlinks are 0777, as Linux treats every symlink.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

import pyfuse3

from cache_engine.spec import DatasetSpec
from cache_engine.ufs.base import Entry, Kind

BLOCK_SIZE = 1 << 20  # st_blksize: tells readers (cp, dd, Python's io) to ask in 1 MiB
FILE_MODE = 0o444  # a file's permission bits where neither the volume nor the source says
DIR_MODE = 0o555
_TYPE = {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK}


@dataclass(frozen=True, slots=True)
class Permissions:
    """The volume's `uid`, `gid`, `fileMode` and `dirMode` (None: the source's, else the
    defaults), and the one rule that turns an entry into the mode and owner shown."""

    uid: int | None = None
    gid: int | None = None
    file_mode: int | None = None
    dir_mode: int | None = None

    @classmethod
    def of(cls, spec: DatasetSpec) -> Permissions:
        return cls(spec.uid, spec.gid, spec.file_mode, spec.dir_mode)

    def mode(self, entry: Entry) -> int:
        """st_mode: the file type and the permission bits (setuid, setgid, sticky dropped)."""
        if entry.kind is Kind.SYMLINK:
            bits = 0o777
        else:
            given = self.dir_mode if entry.kind is Kind.DIR else self.file_mode
            default = DIR_MODE if entry.kind is Kind.DIR else FILE_MODE
            bits = _first(given, entry.mode, default)
        return _TYPE[entry.kind] | (bits & 0o777)

    def owner(self, entry: Entry) -> tuple[int, int]:
        return _first(self.uid, entry.uid, 0), _first(self.gid, entry.gid, 0)


def _first(*values: int | None) -> int:
    return next(v for v in values if v is not None)


def entry_attributes(inode: int, entry: Entry, permissions: Permissions,
                     timeout: float) -> pyfuse3.EntryAttributes:
    """The attributes of `entry` as node id `inode`, which the kernel may keep `timeout` s."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = inode
    attr.st_mode = permissions.mode(entry)
    attr.st_nlink = 1  # 1, not 2, for dirs: find(1) then never skips subdirectories
    attr.st_uid, attr.st_gid = permissions.owner(entry)
    attr.st_size = entry.size
    attr.st_blksize = BLOCK_SIZE
    attr.st_blocks = (entry.size + 511) // 512
    attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = entry.mtime_ns
    attr.entry_timeout = attr.attr_timeout = timeout
    return attr
