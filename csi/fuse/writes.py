"""The filesystem of a writer-mode volume: `DatasetFs` plus the requests that change the tree.

A volume staged with a writer access mode over a directory source (`local://`, a hostPath or
local claim) or a bucket (`s3://`) is mounted read-write. Over a directory, every change goes
straight to the source through a `LocalWriter`: a write(2) has reached the source file when it
returns, so nothing is lost when a daemon dies, and a successor reopens the write handles the
journal names. Over a bucket, an `S3Writer` stages what is written on the node's disk and
uploads it at close(2) (FLUSH) and fsync, where a failed upload is EIO; what S3 did not take
stays staged and is retried (s3_writer.py). Reads of files nobody writes still go through the
cache engine.

Consistency on one node is close-to-open: when a written file is closed (or fsynced) the engine
is told (`DatasetReader.changed`), so every volume of the dataset on the node sees the new
version at its next open, read from the cache (write-through); other nodes see it when their
metadataTTL runs out. While a file is open for writing, its attributes are read from the open
file itself, never from a cache.

Refused: hard links and special files (EPERM), a symlink that would point out of the dataset
(EPERM), and chmod of a symlink (EOPNOTSUPP); S3 refuses more (s3_writer.py).
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from typing import TYPE_CHECKING

import pyfuse3
import trio

from cache_engine.ufs.base import Entry, Kind, join
from cache_engine.ufs.local_writes import RENAME_EXCHANGE, LocalFile, LocalWriter

from .fs import DatasetFs, _request

if TYPE_CHECKING:  # obstore is loaded only by a daemon that writes to S3
    from cache_engine.ufs.s3_writer import S3File, S3Writer

_SWAP = "\0swap"  # a path no dataset has: the middle step of RENAME_EXCHANGE in the table


class WritableFs(DatasetFs):
    """`DatasetFs` that also creates, writes, renames and removes (see the module docstring).

    Example::

        fs = WritableFs(reader, 60, writer=LocalWriter(LocalUfs("/srv/data")))
    """

    def __init__(self, reader, metadata_ttl, *, writer: LocalWriter | S3Writer, **options):
        super().__init__(reader, metadata_ttl, **options)
        self._writer = writer
        # fh -> the source file behind a handle served from it (None: not reopened after a
        # predecessor died; its requests fail with EIO)
        self._open: dict[int, LocalFile | S3File | None] = {}
        self._writing: Counter[int] = Counter()  # inode -> handles served from the source
        for fh, handle in self._table.files.items():  # a predecessor's: reopen them
            if handle.flags:
                self._reopen(fh, handle)

    def _reopen(self, fh: int, handle) -> None:
        flags = handle.flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)
        try:
            self._open[fh] = self._writer.open(handle.path, flags)
        except OSError as e:  # gone meanwhile: its writes fail, its close still works
            self._log.warning("write handle not reopened", path=handle.path, error=str(e))
            self._open[fh] = None
        self._writing[handle.inode] += 1

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self._meta_limiter)

    def _fresh(self, inode: int, entry: Entry) -> pyfuse3.EntryAttributes:
        """Attributes of what was just changed: the kernel asks again next time."""
        if entry.kind is Kind.FILE:
            self._table.rebind(inode, entry)
        return self._attributes(inode, entry, 0.0)

    async def _changed(self, *paths: str, load: bool = False, tree: bool = False) -> None:
        """Forget `paths` here and tell the engine, for every volume of the dataset."""
        for path in paths:
            self._meta.forget_changed(path, tree)
        changed = getattr(self._reader, "changed", None)
        if changed is not None:
            await self._run(changed, list(paths), load, tree)

    async def _made(self, path: str) -> pyfuse3.EntryAttributes:
        """The new entry at `path` as a node id the kernel now holds a lookup of."""
        entry = await self._run(self._writer.stat, path)
        await self._changed(path)
        inode = self._table.inode_of(path, entry)
        self._table.looked_up(inode)
        return self._fresh(inode, entry)

    def _path(self, parent_inode: int, name: bytes) -> str:
        return join(self._table.path_of(parent_inode), os.fsdecode(name))

    def _file(self, fh: int) -> LocalFile | S3File:
        if fh not in self._open:
            raise pyfuse3.FUSEError(errno.EBADF)
        f = self._open[fh]
        if f is None:
            raise pyfuse3.FUSEError(errno.EIO)
        return f

    # -- files ---------------------------------------------------------------------------

    def _opened(self, inode: int, path: str, entry: Entry, flags: int,
                f: LocalFile | S3File) -> int:
        fh = self._table.open_file(inode, path, entry.version, False, 0, flags)
        self._open[fh] = f
        self._writing[inode] += 1
        return fh

    @_request
    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._path(parent_inode, name)
        f = await self._run(self._writer.open, path, flags | os.O_CREAT,
                            stat.S_IMODE(mode) & ~ctx.umask, (ctx.uid, ctx.gid))
        entry = f.stat()
        await self._changed(path)
        inode = self._table.inode_of(path, entry)
        self._table.looked_up(inode)
        fh = self._opened(inode, path, entry, flags | os.O_CREAT, f)
        return pyfuse3.FileInfo(fh=fh), self._fresh(inode, entry)

    @_request
    async def open(self, inode, flags, ctx=None):
        reads = flags & os.O_ACCMODE == os.O_RDONLY
        if reads and inode not in self._writing:
            return await DatasetFs.open.__wrapped__(self, inode, flags, ctx)
        # A writer's handle, or a reader's of a file being written: the source's own file.
        path = self._table.path_of(inode)
        flags = os.O_RDONLY | os.O_NOFOLLOW if reads else flags
        f = await self._run(self._writer.open, path, flags)
        entry = f.stat()
        self._table.rebind(inode, entry)
        return pyfuse3.FileInfo(fh=self._opened(inode, path, entry, flags, f))

    @_request
    async def write(self, fh, off, buf):
        return await trio.to_thread.run_sync(self._file(fh).write, buf, off,
                                             limiter=self._read_limiter)

    @_request
    async def read(self, fh, off, size):
        if fh not in self._open:
            return await DatasetFs.read.__wrapped__(self, fh, off, size)
        return await trio.to_thread.run_sync(self._file(fh).read, size, off,
                                             limiter=self._read_limiter)

    @_request
    async def fsync(self, fh, datasync):
        if fh in self._open:
            await self._run(self._file(fh).sync, datasync)
            handle = self._table.files[fh]
            await self._settled(handle.inode, handle.path)

    @_request
    async def release(self, fh):
        if fh not in self._open:
            return await DatasetFs.release.__wrapped__(self, fh)
        f = self._open.pop(fh)
        handle = self._table.close_file(fh)
        self._writing[handle.inode] -= 1
        if not self._writing[handle.inode]:
            del self._writing[handle.inode]
        if f is not None:
            await self._run(f.close)
        return None

    async def _settled(self, inode: int, path: str) -> None:
        """A written file was closed or synced: its node id shows what is there now, and
        the node learns of it (its new version loaded into the cache)."""
        try:
            self._table.rebind(inode, await self._run(self._writer.stat, path))
        except (FileNotFoundError, NotADirectoryError):
            pass  # removed or moved meanwhile: nothing to show, nothing to load
        await self._changed(path, load=True)

    @_request
    async def getattr(self, inode, ctx=None):
        if inode not in self._writing:
            return await DatasetFs.getattr.__wrapped__(self, inode, ctx)
        f = next((self._open[fh] for fh, h in self._table.files.items()
                  if h.inode == inode and self._open.get(fh) is not None), None)
        entry = f.stat() if f is not None else \
            await self._run(self._writer.stat, self._table.path_of(inode))
        return self._fresh(inode, entry)

    @_request
    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self._table.path_of(inode)
        f = self._open.get(fh) if fh is not None else None
        w = self._writer
        if fields.update_size and f is not None:
            await self._run(f.truncate, attr.st_size)
        elif fields.update_size:
            await self._run(w.truncate, path, attr.st_size)
        if fields.update_mode:
            await self._run(w.chmod, path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            await self._run(w.chown, path, attr.st_uid if fields.update_uid else -1,
                            attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            await self._run(w.utime, path, attr.st_atime_ns if fields.update_atime else None,
                            attr.st_mtime_ns if fields.update_mtime else None)
        entry = f.stat() if f is not None else await self._run(w.stat, path)
        await self._changed(path, load=inode not in self._writing)
        return self._fresh(inode, entry)

    # -- names ---------------------------------------------------------------------------

    @_request
    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._path(parent_inode, name)
        await self._run(self._writer.mkdir, path, stat.S_IMODE(mode) & ~ctx.umask,
                        (ctx.uid, ctx.gid))
        return await self._made(path)

    @_request
    async def symlink(self, parent_inode, name, target, ctx):
        path = self._path(parent_inode, name)
        await self._run(self._writer.symlink, path, os.fsdecode(target), (ctx.uid, ctx.gid))
        return await self._made(path)

    @_request
    async def unlink(self, parent_inode, name, ctx):
        path = self._path(parent_inode, name)
        await self._run(self._writer.unlink, path)
        await self._changed(path)

    @_request
    async def rmdir(self, parent_inode, name, ctx):
        path = self._path(parent_inode, name)
        await self._run(self._writer.rmdir, path)
        await self._changed(path, tree=True)

    @_request
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old = self._path(parent_inode_old, name_old)
        new = self._path(parent_inode_new, name_new)
        await self._run(self._writer.rename, old, new, flags)
        if flags & RENAME_EXCHANGE:
            self._table.moved(old, _SWAP)
            self._table.moved(new, old)
            self._table.moved(_SWAP, new)
        else:
            self._table.moved(old, new)
        await self._changed(old, new, tree=True)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)  # hard links: not in a dataset

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)  # FIFOs and devices: never in a dataset

    @_request
    async def flush(self, fh):
        """close(2) of a descriptor of `fh` (RELEASE comes later, asynchronously): a file
        closed after writing is settled now, so the writer's next step sees it."""
        handle = self._table.files.get(fh)
        if handle is not None and handle.flags & os.O_ACCMODE != os.O_RDONLY:
            f = self._open.get(fh)
            if f is not None:
                await self._run(f.flush)  # an upload that fails is this close's EIO
            await self._settled(handle.inode, handle.path)
