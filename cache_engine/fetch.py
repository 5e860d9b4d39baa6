"""Getting blocks from the source into the cache: once per block, on demand or ahead of time.

A miss reads the block from the source once however many threads ask (single-flight), stores
it through `Placement` and answers where it now lives; a read-ahead or prefetch queues the
same load in the background, bounded per dataset so one sequential reader cannot flood the
queue. No lock is held across the source read.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace

from eddy.base.errors import InvalidArgument

from .blocks import Block, BlockKey, block_path, checksum
from .dataset import Dataset
from .placement import Placement
from .prefetch import Prefetcher
from .status import Histogram
from .table import BlockTable
from .tiers import Tier
from .types import Location
from .ufs.base import VersionChanged

# Seconds to read one block from a source: local disk, a LAN object store, a far region.
FETCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COUNTERS = ("source_reads", "source_bytes", "prefetches")


class BlockFetcher:
    """Owns the fetches in flight, the read-ahead queue and the source-read counters.

    The engine calls `fetch` on a miss (and for a preload's block), `schedule` for read-ahead
    and prefetch, `drain`/`close` with its own; a stored block of a large file is handed to
    `compact_when_whole` (the engine's `Extents`). It shares the engine's lock and reads the
    engine's `BlockTable` under it; `counts` and `fetch_seconds` are read under that lock.
    """

    def __init__(self, tiers: list[Tier], table: BlockTable, lock: threading.Condition,
                 placement: Placement, prefetcher: Prefetcher, clock: Callable[[], float],
                 compact_when_whole: Callable[[Dataset, BlockKey, int], None]):
        self._tier = {t.name: t for t in tiers}
        self._table = table
        self._lock = lock
        self._places = placement
        self._prefetcher = prefetcher
        self._clock = clock
        self._compact_when_whole = compact_when_whole
        self._inflight: dict[BlockKey, Future] = {}
        self._queued: set[BlockKey] = set()  # handed to the prefetcher, not started yet
        self._counters = dict.fromkeys(COUNTERS, 0)
        self.fetch_seconds = Histogram(FETCH_BUCKETS)  # source reads of whole blocks

    def counts(self) -> dict[str, int]:
        """Under the lock: the counters, by name (see COUNTERS)."""
        return dict(self._counters)

    def location(self, block: Block) -> Location:
        return Location(block_path(self._tier[block.tier], block.file), block.offset,
                        block.length, block.checksum)

    def schedule(self, ds: Dataset, key: BlockKey, file_size: int, first: int, count: int,
                 limit: int | None) -> int:
        """Load blocks [first, first+count) of `key`'s file version in the background, at
        most `limit` of the dataset's at once; returns how many were queued."""
        end = min(first + count, ds.block_count(file_size))
        with self._lock:
            # Windows of consecutive requests overlap: a block already queued is not queued
            # again (a duplicate would take a slot of the dataset's read-ahead limit).
            todo = [k for k in (key._replace(index=i) for i in range(max(first, 0), end))
                    if k not in self._table.blocks and k not in self._inflight
                    and k not in self._queued]
            self._queued.update(todo)
        queued = 0
        for k in todo:
            if not self._prefetcher.submit(self._prefetch_one, ds, k, file_size,
                                           owner=ds.id, limit=limit):
                with self._lock:
                    self._queued.difference_update(todo[queued:])
                break
            queued += 1
        return queued

    def _prefetch_one(self, ds: Dataset, key: BlockKey, file_size: int) -> None:
        with self._lock:
            self._queued.discard(key)
            if key in self._table.blocks:
                return
            self._counters["prefetches"] += 1
        self.fetch(ds, key, file_size)

    def fetch(self, ds: Dataset, key: BlockKey, file_size: int) -> Location:
        """Single-flight: the first thread loads the block, the others wait for its answer."""
        with self._lock:
            block = self._table.get(key)
            if block is not None:  # stored while this thread was on its way here
                self._table.touch(block, self._clock())
                return self.location(block)
            future = self._inflight.get(key)
            leader = future is None
            if leader:
                future = self._inflight[key] = Future()
        if not leader:
            return future.result()
        try:
            loc = self._load(ds, key, file_size)
        except BaseException as e:
            future.set_exception(e)
            raise
        else:
            future.set_result(loc)
            return loc
        finally:
            with self._lock:
                del self._inflight[key]

    def _load(self, ds: Dataset, key: BlockKey, file_size: int) -> Location:
        length = block_length(ds, key, file_size)
        start = time.monotonic()
        with ds.source() as ufs:
            data = ufs.read(key.path, key.index * ds.block_size, length, key.version or None)
        with self._lock:
            self.fetch_seconds.observe(time.monotonic() - start)
            self._counters["source_reads"] += 1
            self._counters["source_bytes"] += len(data)
        if len(data) != length:
            raise VersionChanged(
                errno.ESTALE, f"the source returned {len(data)} bytes for block {key.index}"
                f" where {length} were expected: the file changed", key.path)
        block = self._places.store(ds, key, data, checksum(data))
        if block is None:
            return Location(data=data)
        self._compact_when_whole(ds, key, file_size)
        return replace(self.location(block), data=data)


def block_length(ds: Dataset, key: BlockKey, file_size: int) -> int:
    """Bytes in block `key.index` of a file of `file_size`; InvalidArgument past its end."""
    start = key.index * ds.block_size
    if key.index < 0 or start >= file_size:
        raise InvalidArgument(
            f"block {key.index} is beyond the end of {key.path!r} ({file_size} bytes)")
    return min(ds.block_size, file_size - start)
