"""The FUSE filesystem of one volume: kernel requests answered from a dataset reader.

This class serves reads; writes.py adds the requests that change the tree for writer-mode
volumes.

`DatasetFs` only calls `stat`, `list` and `read` of a `UfsBackend`-shaped reader, so the same
filesystem serves straight from a source or from the cache engine's client. Every reader call
runs in a worker thread under a `trio.CapacityLimiter`: one slow ranged read never stalls the
event loop that answers every other request of the mount. A reader that also has `extent`
(the cache engine's) lets opens of wholly cached files pass through to the kernel
(passthrough.py), which then reads them without asking this process.

Directories and symlinks get one inode number per path. A regular file gets one inode per
(path, version): its attributes and bytes never change, so the kernel may keep its page cache
across every open of it. When the source file changes, the next lookup after the metadata TTL
answers a new inode; readers that opened the old version keep reading the old inode (its own
pages, its own size) and never see a mix of old and new bytes. A number is kept while the
kernel holds it (a lookup not yet forgotten, an open handle), so the daemon's memory follows
what the kernel caches, not every path a pod ever walked; once forgotten, a later lookup of the
path gets a new number. Numbers are never reused while the connection lives. Modes and
owners are the source's or the volume's (attributes.py), and the kernel checks them
(`default_permissions`). Node ids and handles live in a `SessionTable` (session.py),
journaled before each answer, so a daemon that resumes this mount after its predecessor died
knows them all.
"""

from __future__ import annotations

import errno
import functools
import os
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3
import trio

from cache_engine.metadata import MetadataCache
from cache_engine.ufs.base import Entry, Kind, UfsBackend, VersionChanged, join
from eddy.base import log
from eddy.base.errors import EddyError

from .attributes import BLOCK_SIZE, Permissions, entry_attributes
from .passthrough import BackingFiles, Passthrough, pyfuse3_has_passthrough
from .session import SessionTable

READ_THREADS = 16
METADATA_THREADS = 8

# Checked in order by isinstance; the first match wins. VersionChanged is an OSError too.
_ERRNO = (
    (VersionChanged, errno.ESTALE),
    (FileNotFoundError, errno.ENOENT),
    (NotADirectoryError, errno.ENOTDIR),
    (IsADirectoryError, errno.EISDIR),
    (PermissionError, errno.EACCES),
)
_QUIET = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR})


def errno_of(exc: BaseException) -> int:
    """The errno a failed request answers with: the one table of exception -> errno."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:  # the system call's own (EPERM, ENOTEMPTY, ..)
        return exc.errno
    for cls, code in _ERRNO:  # one raised with a message only
        if isinstance(exc, cls):
            return code
    return errno.EIO


def _request(method):
    """Answer a kernel request; any exception becomes a FUSEError, and the daemon lives on."""

    @functools.wraps(method)
    async def handler(self: DatasetFs, *args):
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # noqa: BLE001 - the kernel must always get an answer
            raise self._failed(method.__name__, exc) from None
        finally:
            self._table.flush()  # what the answer tells the kernel is journaled before it

    return handler


@dataclass(frozen=True)
class FsStatistics:
    """A snapshot of what the filesystem has done since it was created."""

    reads: int  # read requests answered with data
    passthrough_opens: int  # opens answered with a backing file: the kernel reads those itself
    direct_io_opens: int  # opens of files not cached whole, read around the page cache
    bytes_read: int
    errors: int  # requests answered with an error other than "no such file"
    open_files: int
    open_dirs: int
    known_inodes: int  # inodes the kernel currently holds a reference to


class DatasetFs(pyfuse3.Operations):
    """A read-only POSIX view of one dataset.

    Example::

        fs = DatasetFs(LocalUfs("/data"), metadata_ttl=60, permissions=Permissions(uid=1000))
        pyfuse3.init(fs, "/mnt/data", {"ro", "fsname=eddy", "default_permissions"})
        trio.run(pyfuse3.main)
    """

    supports_dot_lookup = False  # no NFS export: the kernel never looks up "." / ".."
    enable_writeback_cache = False
    enable_acl = False
    enable_passthrough = False  # True on an instance that may pass through: init asks for it
    enable_direct_io_mmap = False  # True: init asks that files opened direct_io may be mapped
    direct_io_mmap = False  # set by eddy's pyfuse3 at init: the kernel granted that

    def __init__(
        self,
        reader: UfsBackend,
        metadata_ttl: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        read_threads: int = READ_THREADS,
        metadata_threads: int = METADATA_THREADS,
        passthrough: bool = True,
        cold_direct_io: bool = True,
        prefetch_wait: Callable[[str], float] = lambda path: 0.0,
        table: SessionTable | None = None,
        on_init: Callable[[], None] | None = None,
        permissions: Permissions | None = None,
    ):
        super().__init__()
        self._reader = reader
        self._permissions = permissions or Permissions()
        self._on_init = on_init
        # Readers that keep checked blocks in memory answer those requests without a thread.
        self._read_cached = getattr(reader, "read_cached", None)
        self._meta = MetadataCache(metadata_ttl, clock)
        # A reader that says how long its answers stay fresh (the engine's, which read them
        # from the source earlier) keeps them here no longer: a change shows within one TTL.
        self._stat_fresh = getattr(reader, "stat_fresh", None) or (
            lambda path: (reader.stat(path), None))
        self._list_fresh = getattr(reader, "list_fresh", None) or (
            lambda path: (reader.list(path), None))
        self._read_limiter = trio.CapacityLimiter(read_threads)
        self._meta_limiter = trio.CapacityLimiter(metadata_threads)
        self._log = log.get("csi.fuse", source=getattr(reader, "description", ""))
        extent = getattr(reader, "extent", None)
        self._passthrough = None
        if passthrough and extent is not None and pyfuse3_has_passthrough():
            self._passthrough = Passthrough(extent, BackingFiles(), self._meta_limiter,
                                            self._log)
            self.enable_passthrough = True
            # Opens of files not cached whole bypass the page cache (`directIO: cold`), but
            # only where a mapping of them still works (Linux 6.6+).
            self.enable_direct_io_mmap = cold_direct_io
        self._prefetch_wait = prefetch_wait  # path -> seconds an open waits for its prefetch
        # Smaller files never have an extent: their opens skip the worker thread that asks.
        self._extent_min_size = getattr(reader, "extent_min_size", 0)
        self._table = table or SessionTable()
        if self._passthrough is not None:  # files a predecessor opened with a backing file
            for handle in self._table.files.values():
                if handle.passthrough:
                    self._passthrough.resume(handle.inode, handle.backing_id)
        self._reads = 0
        self._passthrough_opens = 0
        self._direct_io_opens = 0
        self._bytes_read = 0
        self._errors = 0

    def statistics(self) -> FsStatistics:
        return FsStatistics(
            reads=self._reads, passthrough_opens=self._passthrough_opens,
            direct_io_opens=self._direct_io_opens,
            bytes_read=self._bytes_read, errors=self._errors,
            open_files=len(self._table.files), open_dirs=len(self._table.dirs),
            known_inodes=len(self._table.lookups),
        )

    def init(self) -> None:
        """The kernel's FUSE_INIT is being answered (once per connection, not on a resume)."""
        if self._on_init is not None:
            self._on_init()

    # -- plumbing ------------------------------------------------------------------------

    def _failed(self, op: str, exc: Exception) -> pyfuse3.FUSEError:
        code = errno_of(exc)
        if code not in _QUIET:
            self._errors += 1
        if isinstance(exc, OSError | EddyError):
            level = self._log.debug if code in _QUIET else self._log.warning
            level("request failed", op=op, errno=errno.errorcode.get(code, code), error=str(exc))
        else:
            self._log.exception("request failed unexpectedly", op=op)
        return pyfuse3.FUSEError(code)

    async def _stat(self, path: str) -> tuple[Entry, float]:
        """The entry at `path` and when it expires; FileNotFoundError if it does not exist."""
        cached = self._meta.entry(path)
        if cached is None:
            try:
                entry, fresh_for = await trio.to_thread.run_sync(
                    self._stat_fresh, path, limiter=self._meta_limiter)
            except FileNotFoundError:
                entry, fresh_for = None, None  # nobody caches an absence before this
            cached = self._meta.put_entry(path, entry, fresh_for)
        if cached.entry is None:
            raise FileNotFoundError(errno.ENOENT, "no such file in the dataset", path)
        return cached.entry, cached.expiry

    def _attributes(self, inode: int, entry: Entry, expiry: float) -> pyfuse3.EntryAttributes:
        return entry_attributes(inode, entry, self._permissions,
                                self._meta.kernel_timeout(expiry))

    # -- names and attributes ------------------------------------------------------------

    @_request
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._table.path_of(parent_inode)
        text = os.fsdecode(name)
        if text == ".":
            path = parent
        elif text == "..":
            path = posixpath.dirname(parent)
        else:
            path = join(parent, text)
        try:
            entry, expiry = await self._stat(path)
        except FileNotFoundError:
            cached = self._meta.entry(path)
            timeout = self._meta.kernel_timeout(cached.expiry) if cached else 0.0
            if timeout <= 0:
                raise
            negative = pyfuse3.EntryAttributes()  # st_ino 0: the kernel caches the absence
            negative.entry_timeout = timeout
            return negative
        inode = self._table.inode_of(path, entry)
        self._table.looked_up(inode)
        return self._attributes(inode, self._table.version_of(inode) or entry, expiry)

    @_request
    async def getattr(self, inode, ctx=None):
        path = self._table.path_of(inode)
        version = self._table.version_of(inode)
        if version is not None:  # a file version's attributes never change
            cached = self._meta.entry(path)
            return self._attributes(inode, version, cached.expiry if cached else 0.0)
        entry, expiry = await self._stat(path)
        return self._attributes(inode, entry, expiry)

    @_request
    async def readlink(self, inode, ctx=None):
        entry, _ = await self._stat(self._table.path_of(inode))
        if entry.kind is not Kind.SYMLINK or entry.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(entry.target)

    async def forget(self, inode_list):
        """Drop what is kept for inodes the kernel let go of; their numbers are not reused."""
        for inode, nlookup in inode_list:
            path = self._table.forget(inode, nlookup)
            if path is not None:
                self._meta.forget(path)
        self._table.flush()

    async def getxattr(self, inode, name, ctx=None):
        """Datasets carry no extended attributes.

        ENOSYS, not ENODATA: the kernel then answers every later getxattr/listxattr itself
        with EOPNOTSUPP, which `ls -l` (ACL and SELinux probes) and `cp -a` treat as "none",
        and a 10k-entry `ls -l` saves 20k round trips to this process.
        """
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def listxattr(self, inode, ctx=None):
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_request
    async def statfs(self, ctx=None):
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = BLOCK_SIZE
        st.f_blocks = st.f_bfree = st.f_bavail = 0
        st.f_files = self._table.known_paths
        st.f_ffree = st.f_favail = 0
        st.f_namemax = 255
        return st

    # -- directories ---------------------------------------------------------------------

    @_request
    async def opendir(self, inode, ctx=None):
        """Snapshot the listing: readdir offsets index into it, so none repeats or is lost."""
        path = self._table.path_of(inode)
        listing = self._meta.listing(path)
        if listing is None:
            entries, fresh_for = await trio.to_thread.run_sync(
                self._list_fresh, path, limiter=self._meta_limiter)
            listing = self._meta.put_listing(path, entries, fresh_for)
        return self._table.open_dir(inode, path, listing.entries, listing.expiry)

    @_request
    async def readdir(self, fh, start_id, token):
        """Answer readdirplus: every entry carries its attributes, so `ls -l` needs no lookups."""
        handle = self._table.dirs[fh]
        if handle.entries is None:  # opened by a predecessor of this daemon: list it again
            entries, fresh_for = await trio.to_thread.run_sync(
                self._list_fresh, handle.path, limiter=self._meta_limiter)
            listing = self._meta.put_listing(handle.path, entries, fresh_for)
            handle.entries, handle.expiry = listing.entries, listing.expiry
        for index in range(start_id, len(handle.entries)):
            entry = handle.entries[index]
            inode = self._table.inode_of(join(handle.path, entry.name), entry)
            attr = self._attributes(inode, self._table.version_of(inode) or entry,
                                    handle.expiry)
            if not pyfuse3.readdir_reply(token, os.fsencode(entry.name), attr, index + 1):
                self._table.forget(inode, 0)  # not sent: a new node id must not stay behind
                break
            self._table.looked_up(inode)

    @_request
    async def releasedir(self, fh):
        self._table.close_dir(fh)

    # -- files ---------------------------------------------------------------------------

    @_request
    async def open(self, inode, flags, ctx=None):
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self._table.path_of(inode)
        entry = self._table.version_of(inode)
        if entry is None:
            entry, _ = await self._stat(path)
            raise pyfuse3.FUSEError(errno.EISDIR if entry.kind is Kind.DIR else errno.ELOOP)
        backing_id = 0
        tracked = self._passthrough is not None and entry.size >= self._extent_min_size
        if tracked:
            backing_id = await self._passthrough.open(inode, path, entry.version, entry.size,
                                                      self._prefetch_wait(path))
        fh = self._table.open_file(inode, path, entry.version, tracked, backing_id)
        if backing_id:
            self._passthrough_opens += 1
            # The kernel reads the extent itself, and fails the open beside keep_cache.
            return pyfuse3.FileInfo(fh=fh, keep_cache=False, backing_id=backing_id)
        if tracked and self.direct_io_mmap:
            # Not cached whole yet (or its extent is not trusted now): each reply is copied
            # straight into the reader's buffer, not into page cache that would hold the
            # file a second time beside the tier (and be charged to the pod). A later open
            # of the whole file passes through to the tier's copy.
            self._direct_io_opens += 1
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        # This inode only ever shows this version: the kernel's pages of it stay right. A
        # version-less source (no etag, size or mtime) gets no such promise.
        return pyfuse3.FileInfo(fh=fh, keep_cache=bool(entry.version))

    @_request
    async def read(self, fh, off, size):
        try:
            handle = self._table.files[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None
        version = handle.version or None
        data = None
        if self._read_cached is not None:
            # Never blocks, so it may run on the event loop: most requests of a sequential
            # reader are answered here, without the thread hop that costs more than they do.
            data = self._read_cached(handle.path, off, size, version)
        if data is None:
            data = await trio.to_thread.run_sync(
                self._reader.read, handle.path, off, size, version, limiter=self._read_limiter)
        self._reads += 1
        self._bytes_read += len(data)
        return data

    @_request
    async def release(self, fh):
        handle = self._table.close_file(fh)
        if handle is not None and handle.passthrough and self._passthrough is not None:
            self._passthrough.release(handle.inode)
