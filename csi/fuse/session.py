"""What the kernel holds of one mount: its node ids and open handles, kept for a successor.

The kernel names the daemon's objects by number: node ids it looked up (each with a count of
lookups it will forget later), handles of open files and directories. A FUSE connection
outlives its daemon while another process holds its /dev/fuse descriptor (the mounter and the
node plugin do), so a daemon that dies can be replaced without a new mount; but a successor
that does not know those numbers would answer every request of a running pod with ESTALE or
EBADF. So every change to them is applied to a `SessionTable` and appended to its `Journal`
(journal.py) before the request that made it is answered, and a successor replays the journal.
"""

from __future__ import annotations

import contextlib
import errno
from collections import Counter
from dataclasses import dataclass, replace

import pyfuse3

from cache_engine.ufs.base import Entry, Kind

from .journal import Journal

ROOT_INODE = pyfuse3.ROOT_INODE
COMPACT_MIN_RECORDS = 4096  # the journal is rewritten past this many records (and 4x the live)


@dataclass(frozen=True, slots=True)
class OpenFile:
    """What the kernel's file handle (fh) stands for: the inode, its path and the file version it
    opened, and whether its open went through FUSE passthrough (with the kernel's backing id)."""

    inode: int
    path: str
    version: str
    passthrough: bool = False  # its open went through `Passthrough`, its release must too
    backing_id: int = 0  # the kernel reads it from this backing file (0: through the daemon)
    # open(2) flags of a handle served from the source's own file (writes.py: a writer's, or a
    # reader's of a file being written); 0 for one read through the cache
    flags: int = 0


@dataclass(slots=True)
class OpenDir:
    """What the kernel's directory handle stands for: the directory and the listing its readdir
    offsets index (None after a resume: listed again at the next readdir)."""

    inode: int
    path: str
    entries: list[Entry] | None  # the listing readdir offsets index; None: list it again
    expiry: float


def _entry_record(entry: Entry | None) -> list | None:
    if entry is None:
        return None
    return [entry.kind.value, entry.size, entry.mtime_ns, entry.version, entry.target,
            entry.mode, entry.uid, entry.gid]


def _entry(path: str, record: list | None) -> Entry | None:
    """The entry of a record; one written before modes and owners were kept has none."""
    if record is None:
        return None
    kind, size, mtime_ns, version, target, *owner = record
    mode, uid, gid = owner or (None, None, None)
    return Entry(path, Kind(kind), size, mtime_ns, version, target, mode, uid, gid)


def _owner(entry: Entry) -> tuple[int | None, ...]:
    return entry.mode, entry.uid, entry.gid


class SessionTable:
    """Node ids and handles the kernel holds for one mount, journaled as they change.

    Directories and symlinks get one node id per path; a regular file one per (path, version),
    whose attributes then never change. A node id lives while the kernel holds a lookup of it
    or a handle names it (`_prune`); numbers are never reused while the connection lives,
    across successors too. Every change goes through `_apply`, both when it happens (then it
    is also journaled) and when a successor replays it, so the two cannot disagree.

    Example::

        table = SessionTable(Journal(session_dir))
        inode = table.inode_of("a/b.bin", entry)
        table.looked_up(inode)
        table.flush()  # before the lookup is answered
    """

    def __init__(self, journal: Journal | None = None,
                 compact_after: int = COMPACT_MIN_RECORDS):
        self._journal = journal or Journal(None)
        self._compact_after = compact_after
        # (path, version) -> inode; the version is None for directories and symlinks
        self._inodes: dict[tuple[str, str | None], int] = {("", None): ROOT_INODE}
        self._paths: dict[int, str] = {ROOT_INODE: ""}
        self._versions: dict[int, Entry] = {}  # file inode -> the one version it shows
        self.lookups: Counter[int] = Counter({ROOT_INODE: 1})
        self._handles: Counter[int] = Counter()  # inode -> open file and directory handles
        self.files: dict[int, OpenFile] = {}
        self.dirs: dict[int, OpenDir] = {}
        self._next_inode = ROOT_INODE + 1
        self._next_fh = 1

    @classmethod
    def resume(cls, journal: Journal) -> SessionTable:
        """The table as the journal's writer left it."""
        table = cls(journal)
        for record in journal.replay():
            try:
                table._apply(record)
            except (KeyError, IndexError, TypeError, ValueError):
                continue  # a record this version does not know: nothing the kernel needs
        table._journal.rewrite(table._snapshot())
        return table

    # -- the one place that changes the tables -------------------------------------------

    def _record(self, *record) -> None:
        self._apply(list(record))
        self._journal.add(list(record))

    def _apply(self, record: list) -> None:
        op = record[0]
        if op == "node":
            _, inode, path, entry = record
            entry = _entry(path, entry)
            is_file = entry is not None and entry.kind is Kind.FILE
            if inode in self._paths:  # a writer changed the file: its old key goes
                self._drop_key(inode)
            self._inodes[(path, entry.version if is_file else None)] = inode
            self._paths[inode] = path
            if is_file:
                self._versions[inode] = entry
            self._next_inode = max(self._next_inode, inode + 1)
        elif op == "look":
            self.lookups[record[1]] += record[2]
        elif op == "forget":
            _, inode, count = record
            left = self.lookups.get(inode, 0) - count
            if left > 0:
                self.lookups[inode] = left
            else:
                self.lookups.pop(inode, None)
                self._prune(inode)
        elif op == "open":
            _, fh, inode, path, version, passthrough, backing_id, *flags = record
            self.files[fh] = OpenFile(inode, path, version, passthrough, backing_id, *flags)
            self._handles[inode] += 1
            self._next_fh = max(self._next_fh, fh + 1)
        elif op == "dir":
            _, fh, inode, path = record
            self.dirs[fh] = OpenDir(inode, path, None, 0.0)
            self._handles[inode] += 1
            self._next_fh = max(self._next_fh, fh + 1)
        elif op in ("close", "closedir"):
            handle = (self.files if op == "close" else self.dirs).pop(record[1])
            self._handles[handle.inode] -= 1
            self._prune(handle.inode)
        elif op == "move":
            self._move(record[1], record[2])
        elif op == "next":
            self._next_inode = max(self._next_inode, record[1])
            self._next_fh = max(self._next_fh, record[2])
        else:
            raise ValueError(op)

    def _prune(self, inode: int) -> None:
        """Drop `inode` once no lookup of the kernel's and no handle holds it (a RELEASE may
        come after the FORGET); its number is never handed out again, a request naming it is
        answered ESTALE."""
        if inode == ROOT_INODE or self.lookups[inode] > 0 or self._handles[inode] > 0:
            return
        self._handles.pop(inode, None)
        self._drop_key(inode)
        self._paths.pop(inode, None)
        self._versions.pop(inode, None)

    def _key(self, inode: int) -> tuple[str | None, str | None]:
        entry = self._versions.get(inode)
        return self._paths.get(inode), None if entry is None else entry.version

    def _drop_key(self, inode: int) -> None:
        key = self._key(inode)
        if self._inodes.get(key) == inode:
            del self._inodes[key]

    def _move(self, old: str, new: str) -> None:
        """A rename: `old` and everything below it is at `new` now (the kernel keeps their
        node ids, and so do open handles)."""
        def moved(path: str) -> str | None:
            if path == old or path.startswith(f"{old}/"):
                return new + path[len(old):]
            return None

        for inode, path in list(self._paths.items()):
            if (to := moved(path)) is not None:
                self._drop_key(inode)
                self._paths[inode] = to
                if inode in self._versions:
                    self._versions[inode] = replace(self._versions[inode], path=to)
                self._inodes[self._key(inode)] = inode
        for handles in (self.files, self.dirs):
            for fh, handle in list(handles.items()):
                if (to := moved(handle.path)) is not None:
                    handles[fh] = replace(handle, path=to)

    def flush(self) -> None:
        """Journal what changed; rewrite the journal whole once it is mostly history."""
        if not self._journal.pending:  # most requests (reads, getattr) change nothing
            return
        live = len(self.lookups) + len(self.files) + len(self.dirs)
        if self._journal.records > max(self._compact_after, 4 * live):
            self._journal.rewrite(self._snapshot())
        else:
            self._journal.flush()

    def _snapshot(self) -> list[list]:
        records = []
        for inode, path in self._paths.items():  # only what is live: the rest was pruned
            if inode != ROOT_INODE:
                records.append(["node", inode, path, _entry_record(self._versions.get(inode))])
                if inode in self.lookups:
                    records.append(["look", inode, self.lookups[inode]])
        records.extend(["open", fh, f.inode, f.path, f.version, f.passthrough, f.backing_id,
                        f.flags] for fh, f in self.files.items())
        records.extend(["dir", fh, d.inode, d.path] for fh, d in self.dirs.items())
        records.append(["next", self._next_inode, self._next_fh])
        return records

    # -- node ids ------------------------------------------------------------------------

    def inode_of(self, path: str, entry: Entry) -> int:
        """The node id of `path` as `entry` describes it (a new one for a new file version).

        A chmod or chown at the source keeps the version: the file's node id stays, and
        shows the new mode and owner from then on.
        """
        is_file = entry.kind is Kind.FILE
        key = (path, entry.version if is_file else None)
        inode = self._inodes.get(key)
        if inode is None or (is_file and _owner(self._versions[inode]) != _owner(entry)):
            self._record("node", inode or self._next_inode, path,
                         _entry_record(entry) if is_file else None)
            inode = self._inodes[key]
        return inode

    def path_of(self, inode: int) -> str:
        """The path of a live node id; ESTALE for one never given or already pruned."""
        try:
            return self._paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def version_of(self, inode: int) -> Entry | None:
        """The file version a file inode shows (None for directories and symlinks)."""
        return self._versions.get(inode)

    def rebind(self, inode: int, entry: Entry) -> None:
        """A writer changed the file behind `inode`: it shows `entry` from now on (the kernel
        keeps the node id, and with it its own view of what was written)."""
        if inode in self._versions and self._versions[inode] != entry:
            self._record("node", inode, self._paths[inode], _entry_record(entry))

    def moved(self, old: str, new: str) -> None:
        """`old` (and everything below it) was renamed to `new`."""
        self._record("move", old, new)

    def looked_up(self, inode: int) -> None:
        self._record("look", inode, 1)

    def forget(self, inode: int, count: int) -> str | None:
        """The kernel dropped `count` lookups; the inode's path once it holds none. A count
        of 0 drops a node id the kernel was never told of (a readdir entry that did not fit)."""
        if inode == ROOT_INODE:
            return None
        path = self._paths.get(inode)
        self._record("forget", inode, count)
        return None if inode in self.lookups else path

    @property
    def known_paths(self) -> int:
        """Node ids kept: the root, those the kernel holds lookups of or handles name."""
        return len(self._paths)

    # -- handles -------------------------------------------------------------------------

    def open_file(self, inode: int, path: str, version: str, passthrough: bool,
                  backing_id: int, flags: int = 0) -> int:
        """A new file handle; `flags` of one that writes (kept so a successor reopens it)."""
        fh = self._next_fh
        self._record("open", fh, inode, path, version, passthrough, backing_id,
                     *([flags] if flags else []))
        return fh

    def close_file(self, fh: int) -> OpenFile | None:
        handle = self.files.get(fh)
        if handle is not None:
            self._record("close", fh)
        return handle

    def open_dir(self, inode: int, path: str, entries: list[Entry], expiry: float) -> int:
        fh = self._next_fh
        self._record("dir", fh, inode, path)
        self.dirs[fh].entries = entries
        self.dirs[fh].expiry = expiry
        return fh

    def close_dir(self, fh: int) -> None:
        if fh in self.dirs:
            self._record("closedir", fh)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._journal.close()
