"""A dataset seen through the node's cache engine, shaped like a `UfsBackend`.

This is the cache engine's client API for mount daemons: `DatasetFs` reads a `DatasetReader`
exactly as it would read a source. A read asks the engine where each block lives, preads the
whole block from its tier file once, checks its length and checksum (a mismatch is reported and
refetched, never served), and keeps a few recent blocks so the kernel's 1 MiB requests inside
one block cost one engine round trip, not four.
"""

from __future__ import annotations

import collections
import errno
import os
import threading

import xxhash

from . import spec as specmod
from .ufs.base import Entry, Kind, UfsBackend, VersionChanged
from .wire import DatasetNotOpen

RECENT_BLOCK_BYTES = 64 << 20  # memory for recently read blocks, whatever the block size


class CorruptBlock(OSError):
    """A tier file did not hold the bytes the index promised, even after a refetch."""


class DatasetReader(UfsBackend):
    def __init__(self, engine, spec: specmod.DatasetSpec, secrets: dict[str, str]):
        self._engine = engine  # a CacheEngine, or an EngineClient to the node's engine
        self._spec = spec
        self._secrets = secrets
        self.description = spec.source.uri
        self._lock = threading.Lock()
        self._open()
        self._max_recent = max(2, RECENT_BLOCK_BYTES // self.info.block_size)
        self._recent: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self._pending: dict[tuple, threading.Event] = {}
        self._sizes: dict[tuple[str, str], int] = {}

    def _open(self) -> None:
        self.info = self._engine.open_dataset(self._spec, self._secrets)

    def _call(self, method, *args):
        """Call the engine; if it restarted and forgot the dataset, open it again once."""
        try:
            return method(self.info.dataset_id, *args)
        except DatasetNotOpen:
            self._open()
            return method(self.info.dataset_id, *args)

    def _remember(self, entry: Entry) -> Entry:
        if entry.kind == Kind.FILE:
            self._sizes[(entry.path, entry.version)] = entry.size
        return entry

    def stat(self, path: str) -> Entry:
        return self._remember(self._call(self._engine.stat, path))

    def list(self, path: str) -> list[Entry]:
        return [self._remember(e) for e in self._call(self._engine.list, path)]

    def read(self, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        if version is None:
            version = self.stat(path).version
        size = self._sizes.get((path, version))
        if size is None:
            entry = self.stat(path)
            if entry.version != version:
                raise VersionChanged(errno.ESTALE, "file changed at the source", path)
            size = entry.size
        end = min(offset + length, size)
        if offset >= end:
            return b""
        bs = self.info.block_size
        parts = []
        for index in range(offset // bs, (end - 1) // bs + 1):
            block = self._block(path, version, index, size)
            start = max(offset - index * bs, 0)
            stop = min(end - index * bs, len(block))
            parts.append(block[start:stop] if (start, stop) != (0, len(block)) else block)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _block(self, path: str, version: str, index: int, size: int) -> bytes:
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
            block = self._fetch(path, version, index, size)
            with self._lock:
                self._recent[key] = block
                while len(self._recent) > self._max_recent:
                    self._recent.popitem(last=False)
            return block
        finally:
            with self._lock:
                del self._pending[key]
            pending.set()

    def _fetch(self, path: str, version: str, index: int, size: int) -> bytes:
        for _attempt in range(3):
            loc = self._call(self._engine.locate, path, version, index, size)
            if loc.data is not None:
                return loc.data
            try:
                fd = os.open(loc.file, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # evicted between locate and open: ask again
            try:
                data = os.pread(fd, loc.length, loc.offset)
            finally:
                os.close(fd)
            if len(data) == loc.length and xxhash.xxh3_64_intdigest(data) == loc.checksum:
                return data
            self._call(self._engine.report_corrupt, path, version, index)
        raise CorruptBlock(errno.EIO, f"block {index} of {path} failed its checksum repeatedly")

    def close(self) -> None:
        with self._lock:
            self._recent.clear()
