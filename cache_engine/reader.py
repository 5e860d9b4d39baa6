"""A dataset seen through the node's cache engine, shaped like a `UfsBackend`.

This is the cache engine's client API for mount daemons: `DatasetFs` reads a `DatasetReader`
exactly as it would read a source. A read asks the engine where each block lives, preads the
whole block from its tier file once, checks its length and checksum (a mismatch is reported and
refetched, never served), and keeps a few recent blocks so the kernel's 1 MiB requests inside
one block cost one engine round trip, not four. `extent` answers the mount's open with a
tier file holding the whole file, when the engine has one, for the kernel to read itself.

If the engine cannot be reached (the node plugin is restarting) and a `direct` source was
given, reads go straight to the source until the engine answers again: pods see slower reads,
never errors, while the plugin is away.
"""

from __future__ import annotations

import collections
import errno
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import xxhash

from eddy.base import log

from . import spec as specmod
from .buffers import BlockBuffers
from .sequential import SequentialTracker
from .types import Location
from .ufs.base import Entry, Kind, UfsBackend, VersionChanged
from .wire import DatasetNotOpen, EngineUnreachable

RECENT_BLOCK_BYTES = 64 << 20  # memory for recently read blocks, whatever the block size
AHEAD_BLOCKS = 4  # blocks loaded ahead of a sequential reader
AHEAD_THREADS = 4  # threads loading them, for all readers of the mount
LOCATE_RUN = 8  # blocks (or a folder's next files) one engine call locates: fewer trips
MAX_LOCATED = 256  # locations kept for blocks not loaded yet
MAX_KNOWN_SIZES = 65536  # file versions whose size stats and listings gave (else: stat again)


class CorruptBlock(OSError):
    """A tier file did not hold the bytes the index promised, even after a refetch."""


class DatasetReader(UfsBackend):
    """A dataset read through the cache engine, shaped like a `UfsBackend`.

    Owns a mount's recent blocks, their buffers, the read-ahead threads and the fallback to
    the source while the engine is away. The mount daemon's `DatasetFs` calls it (stat,
    list, read, read_cached, extent); it calls a `CacheEngine` in-process (`eddy mount`) or
    an `EngineClient` to the node's engine.
    """

    def __init__(self, engine, spec: specmod.DatasetSpec, secrets: dict[str, str],
                 direct: Callable[[], UfsBackend] | None = None, volume_id: str = "",
                 recent_bytes: int = RECENT_BLOCK_BYTES, ahead_threads: int = AHEAD_THREADS,
                 known_sizes: int = MAX_KNOWN_SIZES):
        self._engine = engine  # a CacheEngine, or an EngineClient to the node's engine
        self._spec = spec
        self._secrets = secrets
        self._volume_id = volume_id  # named in the engine's status
        self.description = spec.source.shown
        self._lock = threading.Lock()
        self._open_direct = direct
        self._direct: UfsBackend | None = None
        self._engine_away = False
        self._open()
        self._max_recent = max(2, recent_bytes // self.info.block_size)
        self._recent: collections.OrderedDict[tuple, memoryview | bytes] = \
            collections.OrderedDict()
        self._pending: dict[tuple, threading.Event] = {}
        self._queued: set[tuple] = set()  # blocks handed to the read-ahead threads, not started
        # Where the engine said blocks not loaded yet live (it counted them as hits then).
        self._located: collections.OrderedDict[tuple, Location] = collections.OrderedDict()
        # (path, version) -> size, the most recently used `known_sizes` of them
        self._sizes: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()
        self._max_sizes = known_sizes
        self._sequential = SequentialTracker()  # by (path, version)
        self._buffers = BlockBuffers(self.info.block_size, self._max_recent + AHEAD_BLOCKS)
        self._ahead = ThreadPoolExecutor(ahead_threads, thread_name_prefix="block-ahead")

    def _open(self) -> None:
        self.info = self._engine.open_dataset(self._spec, self._secrets, self._volume_id)

    def _call(self, method, *args):
        """Call the engine; if it restarted and forgot the dataset, open it again once."""
        try:
            return method(self.info.dataset_id, *args)
        except DatasetNotOpen:
            self._open()
            return method(self.info.dataset_id, *args)

    def _remember(self, entries: list[Entry]) -> None:
        """Keep the sizes of file versions a stat or listing gave, so their reads need no stat."""
        with self._lock:
            for entry in entries:
                if entry.kind == Kind.FILE:
                    self._sizes[(entry.path, entry.version)] = entry.size
                    self._sizes.move_to_end((entry.path, entry.version))
            while len(self._sizes) > self._max_sizes:
                self._sizes.popitem(last=False)

    def _known_size(self, path: str, version: str | None) -> int | None:
        """The size kept for this file version, or None (under the lock)."""
        size = self._sizes.get((path, version))
        if size is not None:
            self._sizes.move_to_end((path, version))
        return size

    def _through_engine(self, call: Callable, direct_call: Callable):
        """`call()`, or `direct_call(source)` while the engine cannot be reached."""
        try:
            result = call()
        except EngineUnreachable as e:
            if self._open_direct is None:
                raise
            with self._lock:
                if not self._engine_away:
                    self._engine_away = True
                    log.get("cache_engine.reader").warning(
                        "engine.unreachable", source=self.description, error=str(e),
                        fallback="reading the source directly")
                if self._direct is None:
                    self._direct = self._open_direct()
                direct = self._direct
            return direct_call(direct)
        if self._engine_away:
            with self._lock:
                if self._engine_away:
                    self._engine_away = False
                    log.get("cache_engine.reader").info("engine.back", source=self.description)
        return result

    def stat(self, path: str) -> Entry:
        return self.stat_fresh(path)[0]

    def list(self, path: str) -> list[Entry]:
        return self.list_fresh(path)[0]

    def stat_fresh(self, path: str) -> tuple[Entry, float | None]:
        """The entry and the seconds it stays fresh (None: as long as the TTL, read now)."""
        def engine() -> tuple[Entry, float | None]:
            entry, fresh_for = self._call(self._engine.stat_fresh, path)
            self._remember([entry])
            return entry, fresh_for
        return self._through_engine(engine, lambda src: (src.stat(path), None))

    def list_fresh(self, path: str) -> tuple[list[Entry], float | None]:
        def engine() -> tuple[list[Entry], float | None]:
            entries, fresh_for = self._call(self._engine.list_fresh, path)
            self._remember(entries)
            return entries, fresh_for
        return self._through_engine(engine, lambda src: (src.list(path), None))

    def read(self, path: str, offset: int, length: int,
             version: str | None = None) -> bytes | memoryview:
        """The bytes, as a view of a cached block where one block holds them all (no copy)."""
        return self._through_engine(lambda: self._read(path, offset, length, version),
                                    lambda src: src.read(path, offset, length, version))

    def _read(self, path: str, offset: int, length: int,
              version: str | None) -> bytes | memoryview:
        if version is None:
            version = self.stat(path).version
        with self._lock:
            size = self._known_size(path, version)
        if size is None:
            entry = self.stat(path)
            if entry.version != version:
                raise VersionChanged(errno.ESTALE, "file changed at the source", path)
            size = entry.size
        end = min(offset + length, size)
        if offset >= end:
            return b""
        bs = self.info.block_size
        first = offset // bs
        with self._lock:
            ahead = self._plan_ahead(path, version, first, size)
        self._start_ahead(path, version, ahead, size)
        blocks = [self._block(path, version, index, size)
                  for index in range(first, (end - 1) // bs + 1)]
        return self._cut(blocks, first, offset, end)

    @property
    def extent_min_size(self) -> int:
        """The smallest file the engine has an extent for: two blocks (one locate reads one).
        The mount asks `extent` for no smaller file."""
        return self.info.block_size + 1

    def extent(self, path: str, version: str, size: int, wait: float = 0.0) -> str | None:
        """A tier file holding this whole file version, for the mount to hand to the kernel
        at open (FUSE passthrough), after up to `wait` seconds of its `prefetch`
        (`CacheEngine.extent`); None: read it block by block, as while the engine is away."""
        try:
            return self._call(self._engine.extent, path, version, size, wait)
        except EngineUnreachable:
            return None

    def changed(self, paths: list[str], load: bool = False, tree: bool = False) -> None:
        """Tell the engine a writer changed `paths` (`CacheEngine.changed`). An engine that
        is away (restarting) keeps no records to forget, and its blocks of an old version are
        never served for a new one."""
        try:
            self._call(self._engine.changed, paths, load, tree)
        except EngineUnreachable:
            pass

    def read_cached(self, path: str, offset: int, length: int,
                    version: str | None) -> bytes | memoryview | None:
        """The bytes if checked blocks already in memory hold them all, else None; never blocks.

        Most requests of a sequential reader land in a block that an earlier request or the
        read-ahead already loaded and checked. This answers those with no engine call, no I/O
        and no wait for a lock (a busy lock means "use `read`"), so a caller on an event loop
        can skip the hop to a worker thread that `read` needs: for a mount daemon that hop
        costs more CPU than serving the request.
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            size = self._known_size(path, version)  # no version: only `read` can resolve it
            if size is None:
                return None
            end = min(offset + length, size)
            if offset >= end:
                return b""
            bs = self.info.block_size
            first = offset // bs
            keys = [(path, version, index) for index in range(first, (end - 1) // bs + 1)]
            blocks = [self._recent.get(key) for key in keys]
            if None in blocks:
                return None
            for key in keys:
                self._recent.move_to_end(key)
            ahead = self._plan_ahead(path, version, first, size)
            data = self._cut(blocks, first, offset, end)  # under the lock: no block is let go
        finally:
            self._lock.release()
        self._start_ahead(path, version, ahead, size)
        return data

    def _cut(self, blocks: list, first: int, offset: int, end: int) -> bytes | memoryview:
        """Bytes [offset, end) of consecutive blocks starting at block `first`: a view if one
        block holds them all."""
        bs = self.info.block_size
        parts = []
        for index, block in enumerate(blocks, first):
            start = max(offset - index * bs, 0)
            stop = min(end - index * bs, len(block))
            parts.append(block[start:stop] if (start, stop) != (0, len(block)) else block)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _block(self, path: str, version: str, index: int, size: int,
               run: int = 1) -> memoryview | bytes:
        """Block `index`, loaded once however many threads ask; `run` > 1 lets the engine
        locate that many blocks from this one in the same call."""
        key = (path, version, index)
        while True:
            with self._lock:
                block = self._recent.get(key)
                if block is not None:
                    self._recent.move_to_end(key)
                    return block
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = threading.Event()
                    break
            pending.wait()  # another thread fetched it (or failed): look again
        try:
            block = self._fetch(path, version, index, size, run)
            with self._lock:
                self._recent[key] = block
                while len(self._recent) > self._max_recent:
                    self._forget(self._recent.popitem(last=False)[1])
            return block
        finally:
            with self._lock:
                del self._pending[key]
            pending.set()

    def _forget(self, block: memoryview) -> None:
        """Give a dropped block's buffer back for reuse (if it came from the pool).

        The view is dropped, not released: a reader that took it just before it was dropped
        may still be slicing it, and then the buffer is simply not reused.
        """
        buf = block.obj
        del block
        if isinstance(buf, mmap.mmap):
            self._buffers.put(buf)

    def _plan_ahead(self, path: str, version: str, index: int, size: int) -> list[int]:
        """Note that block `index` was asked for; the blocks to load ahead of it (under the lock).

        A sequential reader gets the next blocks loaded while it consumes this one: the
        kernel keeps only a request or two in flight per reader, so without this every block
        would wait for its own pread and checksum.
        """
        if not self._sequential.note((path, version), index, from_start=True):
            return []  # random access
        bs = self.info.block_size
        todo = [i for i in range(index + 1, index + 1 + AHEAD_BLOCKS)
                if i * bs < size and (path, version, i) not in self._recent
                and (path, version, i) not in self._pending
                and (path, version, i) not in self._queued]
        self._queued.update((path, version, i) for i in todo)
        return todo

    def _start_ahead(self, path: str, version: str, todo: list[int], size: int) -> None:
        for i in todo:
            try:
                self._ahead.submit(self._load_quietly, path, version, i, size)
            except RuntimeError:
                return  # closed

    def _load_quietly(self, path: str, version: str, index: int, size: int) -> None:
        with self._lock:
            self._queued.discard((path, version, index))
        try:
            self._block(path, version, index, size, LOCATE_RUN)
        except Exception:  # noqa: BLE001 - a demand read of this block will report it
            pass

    def _locate(self, path: str, version: str, index: int, size: int, run: int) -> Location:
        """Where the block lives: from an earlier run's answer if one had it, else the engine."""
        with self._lock:
            loc = self._located.pop((path, version, index), None)
        if loc is not None:
            return loc
        loc = self._call(self._engine.locate, path, version, index, size, run - 1,
                         LOCATE_RUN if index == 0 else 0)
        if loc.following or loc.next_files:
            with self._lock:
                for i, later in enumerate(loc.following, index + 1):
                    self._located[(path, version, i)] = later
                for other, other_version, first in loc.next_files:
                    self._located[(other, other_version, 0)] = first
                while len(self._located) > MAX_LOCATED:
                    self._located.popitem(last=False)
        return loc

    def _fetch(self, path: str, version: str, index: int, size: int,
               run: int = 1) -> memoryview | bytes:
        """Block `index`, checked. A tier file that is short, fails its checksum, cannot be
        read, or is missing when the engine names it a second time (removed behind its back)
        is reported, so the engine drops the block and the next locate fetches it anew."""
        gone = None  # a file found missing once: the block may just have moved
        for _attempt in range(6):
            loc = self._locate(path, version, index, size, run)
            if loc.data is not None:
                if loc.file is None:  # no tier took it: the source's bytes, kept as they are
                    return memoryview(loc.data)
                # Fetched by this very call in this process: the bytes need no pread and no
                # second checksum, but go into a pooled buffer so the fetch's own buffer is
                # let go at once (kept, 16 of them cost the daemon some 50 MiB more).
                buf = self._buffers.get(loc.length)
                buf[:loc.length] = loc.data
                return memoryview(buf)[:loc.length]
            data = self._pread(loc)
            if data is not None:
                return data
            if loc.file != gone and not os.path.lexists(loc.file):
                gone = loc.file
                continue  # moved or evicted between locate and open: ask again
            self._call(self._engine.report_corrupt, path, version, index)
        raise CorruptBlock(errno.EIO, f"block {index} of {path} failed its checksum repeatedly")

    def _pread(self, loc: Location) -> memoryview | None:
        """The located block's bytes, if its tier file holds them whole and checked."""
        buf = self._buffers.get(loc.length)
        data = memoryview(buf)[:loc.length]  # in an extent, the next block follows
        try:
            fd = os.open(loc.file, os.O_RDONLY | os.O_CLOEXEC)
            try:
                got = os.preadv(fd, [data], loc.offset) if loc.length else 0
            finally:
                os.close(fd)
        except OSError:
            got = -1  # gone, or the tier's disk fails: as bad as a wrong checksum
        if got == loc.length and xxhash.xxh3_64_intdigest(data) == loc.checksum:
            return data
        data.release()
        self._buffers.put(buf)
        return None

    def close(self) -> None:
        self._ahead.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            while self._recent:
                self._forget(self._recent.popitem()[1])
            direct, self._direct = self._direct, None
        if direct is not None:
            direct.close()
