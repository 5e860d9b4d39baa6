"""Getting blocks from the source into the cache: once per block, on demand or ahead of time.

A miss reads the block from the source once however many threads ask (single-flight), stores
it through `Placement` and answers where it now lives; a read-ahead or prefetch queues the
same load in the background, bounded per dataset so one sequential reader cannot flood the
queue. No lock is held across the source read.
"""

from __future__ import annotations

import errno
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import replace

from eddy.base.errors import InvalidArgument

from .blocks import Block, BlockKey, block_path, checksum
from .budget import SourceTimeout
from .dataset import Dataset
from .placement import Placement
from .prefetch import Prefetcher
from .status import Histogram
from .table import BlockTable
from .types import Location
from .ufs.base import VersionChanged

# Seconds to read one block from a source: local disk, a LAN object store, a far region.
FETCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# prefetches_skipped: read-ahead not started, the dataset's source slots being needed or stuck
COUNTERS = ("source_reads", "source_bytes", "prefetches", "prefetches_skipped")


class BlockFetcher:
    """Owns the fetches in flight, the read-ahead queue and the source-read counters.

    The engine calls `fetch` on a miss (and for a preload's block), `schedule` for read-ahead
    and prefetch, `drain`/`close` with its own; a stored block of a large file is handed to
    `compact_when_whole` (the engine's `Extents`). It shares the engine's lock and reads the
    engine's `BlockTable` under it; `counts` and `fetch_seconds` are read under that lock.
    """

    def __init__(self, table: BlockTable, lock: threading.Condition,
                 placement: Placement, prefetcher: Prefetcher, clock: Callable[[], float],
                 compact_when_whole: Callable[[Dataset, BlockKey, int], None]):
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
        return Location(block_path(self._table.tiers[block.tier], block.file), block.offset,
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
            if not self._prefetcher.submit(self.load_ahead, ds, k, file_size,
                                           owner=ds.id, limit=limit):
                with self._lock:
                    self._queued.difference_update(todo[queued:])
                break
            queued += 1
        return queued

    def wanted(self, key: BlockKey) -> bool:
        """Whether a load of `key` would read the source: not cached, loading or queued."""
        with self._lock:
            return (key not in self._table.blocks and key not in self._inflight
                    and key not in self._queued)

    def loading(self, key: BlockKey) -> bool:
        """Whether a block of `key`'s file version is loading or queued. It looks through
        what is in flight or queued, not through the file's blocks: a poll of a huge file
        must not hold the lock every miss takes."""
        version = key[:3]
        with self._lock:
            return any(k[:3] == version for k in itertools.chain(self._inflight, self._queued))

    def load_ahead(self, ds: Dataset, key: BlockKey, file_size: int,
                   taken: bool = False) -> None:
        """Load a block in the background unless it is cached or loading; `taken`: the
        caller holds a slot of the dataset's budget (`try_take`), given back if unused."""
        with self._lock:
            self._queued.discard(key)
            busy = key in self._table.blocks or key in self._inflight
        if busy:
            if taken:
                ds.budget.give_back()
            return
        # Only a slot free beyond the foreground's reserve, never a wait for one: a read-ahead
        # must not hold up a reader's own request, least of all when the source hangs.
        if not taken and not ds.budget.try_take():
            with self._lock:
                self._counters["prefetches_skipped"] += 1
            return
        with self._lock:
            self._counters["prefetches"] += 1
        self.fetch(ds, key, file_size, taken=True)

    def fetch(self, ds: Dataset, key: BlockKey, file_size: int, taken: bool = False) -> Location:
        """Single-flight: the first thread loads the block, the others wait for its answer,
        each at most until its deadline (the dataset's `sourceTimeout` from now); `taken`: the
        caller holds a slot of the dataset's budget, for the source read if it makes one."""
        deadline = time.monotonic() + ds.spec.source_timeout
        with self._lock:
            block = self._table.get(key)
            if block is not None:  # stored while this thread was on its way here
                self._table.touch(block, self._clock())
                found = self.location(block)
            future = self._inflight.get(key)
            leader = block is None and future is None
            if leader:
                future = self._inflight[key] = Future()
        if not leader:
            if taken:
                ds.budget.give_back()
            if block is not None:
                return found
            done, _ = wait([future], max(deadline - time.monotonic(), 0))
            if not done:
                raise SourceTimeout(f"source of dataset {ds.id}: block {key.index} of "
                                    f"{key.path!r}, read by another request, did not come "
                                    "in time (sourceTimeout)")
            return future.result()
        try:
            loc = self._load(ds, key, file_size, deadline, taken)
        except BaseException as e:
            future.set_exception(e)
            raise
        else:
            future.set_result(loc)
            return loc
        finally:
            with self._lock:
                del self._inflight[key]

    def _load(self, ds: Dataset, key: BlockKey, file_size: int, deadline: float,
              taken: bool) -> Location:
        length = block_length(ds, key, file_size)
        start = time.monotonic()
        data = read_source_block(ds, key, length, deadline, taken)
        with self._lock:
            self.fetch_seconds.observe(time.monotonic() - start)
            self._counters["source_reads"] += 1
            self._counters["source_bytes"] += len(data)
        if len(data) != length:
            raise VersionChanged(
                errno.ESTALE, f"the source returned {len(data)} bytes for block {key.index}"
                f" where {length} were expected: the file changed", key.path)
        block = self._places.store(ds, key, data, checksum(data), file_size)
        if block is None:
            return Location(data=data)
        self._compact_when_whole(ds, key, file_size)
        return replace(self.location(block), data=data)


def read_source_block(ds: Dataset, key: BlockKey, length: int, deadline: float,
                      taken: bool = False) -> bytes:
    """Block `key` of its file version, `length` bytes, from the dataset's source (within its
    budget, by `deadline`: `Dataset.call_source`)."""
    offset, version = key.index * ds.block_size, key.version or None
    return ds.call_source(lambda ufs: ufs.read(key.path, offset, length, version),
                          f"read of block {key.index} of {key.path!r}", deadline, taken)


def block_length(ds: Dataset, key: BlockKey, file_size: int) -> int:
    """Bytes in block `key.index` of a file of `file_size`; InvalidArgument past its end."""
    start = key.index * ds.block_size
    if key.index < 0 or start >= file_size:
        raise InvalidArgument(
            f"block {key.index} is beyond the end of {key.path!r} ({file_size} bytes)")
    return min(ds.block_size, file_size - start)
