"""Whole files for the kernel: which cached file versions sit in one extent, and building more.

A reader that opens a file of 2+ blocks asks for an extent: one tier file holding the whole
version at its own offsets, which a mount hands to the kernel (FUSE passthrough) so no read
reaches the daemon. The kernel reads an extent unchecked, so one is handed out only while it is
trusted (scrub.py): in a tier held in RAM as built (nothing rots on a medium there, and a power
loss empties the tier rather than tearing a file), on a disk tier while its last check is
recent; otherwise the file is read block by block, every block checked. The copying itself is
`build` here, through `Placement.relocate`; this module decides when, and runs one compaction
at a time in the background: once every block is cached, and after the file's reader paused if
a whole-file prefetch loaded it ahead of that reader (`quiet_in`): copying a file costs the
reader that is still going through it time, on a machine whose cores the source and the mount
share. Blocks stored in a tier usually land in an extent already (growing.py): compaction
is for the rest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from eddy.base import log

from .blocks import Block, BlockKey, CopyResult, block_path, create_extent, new_extent_name
from .dataset import Dataset
from .health import TierHealth
from .placement import Placement
from .prefetch import Prefetcher
from .scrub import ExtentChecks, Scrubber, stamped
from .table import BlockTable

MAX_DEFER_SECONDS = 30.0  # a compaction waits this long at most for a file's reader to pause
_log = log.get("cache_engine")


class Extents:
    """Owns the extent answers and the background compaction queue.

    The engine calls `extent` for a reader's open and `compact_when_whole` after storing a
    block, and `drain`/`close` with its own. It shares the engine's lock and reads the
    engine's `BlockTable` under it; it counts `extents_served` (read with `counts`).
    `quiet_in(key)` says how many seconds a file version's reader may still be going
    through it (`file_prefetch.FilePrefetches.quiet_in`).
    """

    def __init__(self, table: BlockTable, lock: threading.Condition,
                 placement: Placement, checks: ExtentChecks, health: TierHealth,
                 quiet_in: Callable[[BlockKey], float] = lambda key: 0.0,
                 datasets: Callable[[str], Dataset | None] = lambda id: None,
                 clock: Callable[[], float] = time.monotonic):
        self._table = table
        self._lock = lock
        self._places = placement
        self._checks = checks  # which extents the kernel may read unchecked
        self._scrubber = Scrubber(checks, table, lock, placement, datasets, clock)
        self._health = health
        self._quiet_in = quiet_in
        self._closing = threading.Event()
        self._compactor = Prefetcher(1)  # one extent built at a time, in the background
        self._compacting: set[tuple[str, str, str]] = set()  # file versions queued or in it
        self._served = 0

    def start(self, background: bool = True) -> None:
        """Take on the disk extents rows name, checked when their stamps say, and
        (`background`) start the scrubber."""
        with self._lock:
            blocks = self._checks.disk_extents(self._table)
        files = {(b.tier, b.file) for b in blocks}
        stamps = {(tier, file): stamped(block_path(self._table.tiers[tier], file))
                  for tier, file in files}
        with self._lock:
            self._checks.restore(blocks, stamps)
        if background:
            self._scrubber.start()

    def report_corrupt(self, key: BlockKey) -> None:
        """A reader found `key`'s bytes bad: drop the block; if it sat in a disk extent, that
        extent is scrubbed at once (`ExtentChecks.suspect`)."""
        with self._lock:
            block = self._table.get(key)
            if block is not None:
                self._checks.suspect(block)
        self._places.drop_corrupt(key)

    def scrub_one(self) -> bool:
        """Check the disk extent most due now, if one is (tests; the scrubber does it)."""
        return self._scrubber.scrub_one()

    def counts(self) -> dict[str, int]:
        """Under the lock: this part's counters, by name."""
        return {"extents_served": self._served, "extents_overdue": self._checks.overdue()}

    def extent(self, ds: Dataset, key: BlockKey, file_size: int,
               hit: Callable[[Block], None]) -> str | None:
        """The extent file of `key`'s file version (key index 0) if all its 2+ blocks sit in
        one trusted extent (scrub.py), each block then passed to `hit` under the lock; else
        None, and a version cached whole but not in one extent is queued for compaction.
        """
        count = ds.block_count(file_size)
        if count < 2:
            return None
        with self._lock:
            blocks = self._blocks_of(key, count)
            if blocks is None:
                return None
            whole = in_one_extent(ds, blocks)
            if not whole or not self._checks.trusted(blocks[0].tier, blocks[0].file):
                extent = None
            else:
                for block in blocks:
                    hit(block)
                self._served += 1
                extent = block_path(self._table.tiers[blocks[0].tier], blocks[0].file)
        if not whole:
            self.compact_when_whole(ds, key, file_size)
        return extent

    def _blocks_of(self, key: BlockKey, count: int) -> list[Block] | None:
        """Under the lock: blocks 0..count-1 of `key`'s file version, or None if one is not
        cached. Counted first: a huge sparse file has 2**38 blocks, none of them to walk."""
        if self._table.file_blocks(*key[:3]) < count:
            return None
        blocks = [self._table.get(key._replace(index=i)) for i in range(count)]
        return None if None in blocks else blocks

    def compact_when_whole(self, ds: Dataset, key: BlockKey, file_size: int) -> None:
        """Once all blocks of a file version of 2+ are cached: if they grew in one extent,
        stamp its check on it now (a disk tier's); else queue its compaction (it happens if
        they all sit in one tier)."""
        count = ds.block_count(file_size)
        if count < 2:
            return  # every miss of a small file comes here: no lock for it
        version = key[:3]
        with self._lock:
            if version in self._compacting or self._table.file_blocks(*version) < count:
                return
            blocks = self._blocks_of(key._replace(index=0), count)
            grown = blocks is not None and in_one_extent(ds, blocks)
            if not grown:
                self._compacting.add(version)
        if grown:
            self._scrubber.stamp(blocks[0].tier, blocks[0].file)
            return
        if not self._compactor.submit(self._compact, ds, key._replace(index=0), count):
            with self._lock:
                self._compacting.discard(version)

    def _compact(self, ds: Dataset, key: BlockKey, count: int) -> None:
        try:
            deadline = time.monotonic() + MAX_DEFER_SECONDS
            while True:  # nothing to build (filled in place, say), or the reader paused
                with self._lock:
                    blocks = self._blocks_of(key, count)
                if blocks is None or in_one_extent(ds, blocks):
                    return
                wait = min(self._quiet_in(key), deadline - time.monotonic())
                if wait <= 0:
                    break
                if self._closing.wait(wait):
                    return
            if self.build(blocks) is not None:
                _log.info("extent.built", dataset=ds.id, path=key.path, blocks=count,
                          tier=blocks[0].tier)
        finally:
            with self._lock:
                self._compacting.discard(key[:3])

    def build(self, blocks: list[Block]) -> str | None:
        """Copy every block of one file version (`blocks`, index 0 up, all in one tier) into
        a new extent in that tier, moving each row as its bytes land, so the tier never holds
        more than one block twice. Returns the extent's file, or None if a block was busy or
        went, the tier had no free room for one block, or a write failed: rows already moved
        stay valid where they are."""
        tier = self._table.tiers[blocks[0].tier]
        if not self._health.in_service(tier.name):
            return None
        with self._lock:
            if (any(b.tier != tier.name for b in blocks)
                    or self._table.tier_room(tier.name) < blocks[0].length):
                return None
        extent = new_extent_name(blocks[0].key)
        try:
            create_extent(tier, extent)
        except OSError as e:
            self._places.count("tier_write_failures")
            self._health.fault(tier, e)
            return None
        with self._lock:
            self._table.ref_file(tier.name, extent)  # this writer: the file stays meanwhile
            self._checks.wrote(tier.name, extent, blocks[0].key, len(blocks))  # each copy checks
        offset, done = 0, 0
        for block in blocks:
            # One claim at a time: eviction may still take the blocks not copied yet.
            with self._lock:
                if block.tier != tier.name or not self._table.claim(block):
                    break
                if not self._table.reserve_tier(tier.name, block.length):
                    self._places.release(block)  # free room only: it never pushes a block out
                    break
            if self._places.relocate(block, tier, extent, offset) is not CopyResult.COPIED:
                with self._lock:
                    self._places.release(block)  # a write failure leaves it claimed
                break
            offset += block.length
            done += 1
        with self._lock:
            freed = self._table.unref_file(tier.name, extent)
        self._places.free(tier, extent, freed)
        if done < len(blocks):
            return None
        self._places.count("extents_built")
        self._scrubber.stamp(tier.name, extent)
        return extent

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no compaction is queued or running; False on timeout."""
        return self._compactor.drain(timeout)

    def close(self) -> None:
        self._closing.set()
        self._compactor.close()
        self._scrubber.close()


def in_one_extent(ds: Dataset, blocks: list[Block]) -> bool:
    """Whether a file's blocks (index 0 up) sit in one tier file, each at its own offset."""
    first = blocks[0]
    return all(b.tier == first.tier and b.file == first.file and b.offset == i * ds.block_size
               for i, b in enumerate(blocks))
