"""Which tier a block goes to, and how room is made: store, demote, promote, evict.

New blocks go to the fastest tier their dataset allows. Room is made by demoting that tier's
least recently used blocks to the next allowed tier, which makes its own room the same way;
the last tier evicts. A dataset at its capacity evicts its own LRU blocks. Every step reserves
space before it writes, so `used + reserved <= size` always holds, and follows one crash-safe
order: the new file is complete (tmp + rename) before the index row points at it, and the row
is gone (or moved) before the old file is unlinked. A copy verifies the block's checksum and
drops a corrupt block instead of copying it.

A block stored in a tier held in RAM goes straight into its file version's extent when the
file fits (growing.py); a version cached whole in such a tier some other way is compacted into
one (`extents.Extents.build`), each row moved as its bytes land. A block that leaves
an extent frees nothing until the extent's last row is gone: its bytes are held against the
tier until then (`BlockTable.unref_file`), as a kernel may read the extent unchecked.

A tier that refuses a write is out of service (`health.TierHealth`) until a probe finds it
working; an index write that SQLite refuses never fails a read (`store`, `relocate`, `_discard`).

A block handed out in the last `pin_seconds` is pinned: it may move to another tier (its
reader, finding the old file gone, asks again and is sent to the new one) but is not deleted,
so a reader can always open what it was given. When a cache is too small for the blocks its
readers hold right now, new blocks are served uncached instead of evicting those.

The lock (a Condition) guards the table; it is never held across file I/O. A block being
moved or dropped is claimed (`Block.busy`) so no other thread picks it meanwhile; the condition
is notified whenever a claim ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from eddy.base import log

from .blocks import (
    Block,
    BlockKey,
    CopyResult,
    block_path,
    copy_block,
    new_file_name,
    remove_quietly,
    write_block,
    write_into_extent,
)
from .dataset import Dataset
from .growing import GrowingExtents
from .health import TierHealth
from .index import BlockIndex, IndexWriteFailed
from .table import BlockTable
from .tiers import Tier

# What placement counts (read by the engine's `statistics`).
COUNTERS = ("uncached_reads", "tier_write_failures", "evictions", "demotions", "promotions",
            "checksum_failures", "extents_built", "extents_checked", "extent_repairs",
            "extent_failures")
_log = log.get("cache_engine.placement")


class Placement:
    """Owns where blocks go and how room is made: store, demote, promote, evict.

    The engine calls it on a miss (`store`), on a hit (`promotion_target`, then
    `start_promotions`), when a reader reports a bad block (`drop_corrupt`), when a dataset's
    capacity changes (`shrink_dataset`); `extents.Extents` builds extents with `relocate`, and
    `maintenance.Maintenance` calls `demote_until`. It owns its counters (`counts`). The lock
    is shared with the engine, not owned: the engine's hit path touches the same `BlockTable`
    rows and claims, and a claim's end must wake whoever waits on that one condition.
    `tiers_of` answers which tiers a dataset may use (None: not open, any tier); `health`
    which are in service.
    """

    def __init__(self, tiers: list[Tier], table: BlockTable, index: BlockIndex,
                 lock: threading.Condition, tiers_of: Callable[[str], list[Tier] | None],
                 wake_maintenance: Callable[[], None], clock: Callable[[], float],
                 pin_seconds: float, health: TierHealth, growing: GrowingExtents):
        self.tiers = tiers
        self._tier = {t.name: t for t in tiers}
        self._order = {t.name: i for i, t in enumerate(tiers)}
        self._table = table
        self._index = index
        self._lock = lock
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._tiers_of = tiers_of
        self._wake = wake_maintenance
        self._clock = clock
        self._pin_seconds = pin_seconds
        self._health = health
        self._growing = growing

    # --- new blocks -------------------------------------------------------------------------

    def store(self, ds: Dataset, key: BlockKey, data: bytes, checksum: int,
              file_size: int = 0) -> Block | None:
        """Cache a block of a file of `file_size` fetched from the source; None when no tier
        could take it (or the index could not record it). A tier that refuses the write is
        taken out of service and the next one tried."""
        n = len(data)
        while True:
            tier = self._reserve(ds, n)
            if tier is None:
                self.count("uncached_reads")
                return None
            extent = self._growing.claim(ds, tier, key, file_size)  # this writer holds it
            file, offset = (extent, key.index * ds.block_size) if extent else \
                (new_file_name(key), 0)
            try:
                (write_into_extent(tier, file, offset, data) if extent
                 else write_block(tier, file, data))
                break
            except OSError as e:
                self._unreserve(tier, ds.id, n)
                self._let_go(tier, extent)
                self.count("tier_write_failures")
                self._health.fault(tier, e, n)
        with self._lock:
            block = Block(key, tier.name, file, n, checksum, self._table.next_seq(),
                          self._clock(), offset=offset)
        try:
            self._index.insert(block)
        except BaseException as e:
            self._unreserve(tier, ds.id, n)
            if extent:  # the bytes stay in the extent, held, until it goes
                self._growing.hold(tier.name, extent, n)
                self._let_go(tier, extent)
            else:
                remove_quietly(block_path(tier, file))
            if isinstance(e, IndexWriteFailed):
                self.count("uncached_reads")
                return None
            raise
        with self._lock:
            self._table.unreserve_tier(tier.name, n)
            self._table.unreserve_dataset(ds.id, n)
            self._table.add(block)
            over = self._table.over_high(tier.name)
        self._let_go(tier, extent)
        if over:
            self._wake()
        return block

    def _let_go(self, tier: Tier, extent: str | None) -> None:
        """Drop a writer's reference on `extent` (None: there is none)."""
        if extent is not None:
            self.free(tier, extent, self._growing.let_go(tier.name, extent))

    def _unreserve(self, tier: Tier, dataset_id: str, n: int) -> None:
        with self._lock:
            self._table.unreserve_tier(tier.name, n)
            self._table.unreserve_dataset(dataset_id, n)

    def _reserve(self, ds: Dataset, n: int) -> Tier | None:
        tiers = [t for t in ds.tiers if n <= t.size and self._health.in_service(t.name)]
        if not tiers or not self._reserve_dataset(ds.id, n):
            return None
        for tier in tiers:
            if self._make_room(tier, n):
                return tier
        with self._lock:
            self._table.unreserve_dataset(ds.id, n)
        return None

    def _reserve_dataset(self, dataset_id: str, n: int) -> bool:
        while True:
            with self._lock:
                if self._table.reserve_dataset(dataset_id, n):
                    return True
                cap = self._table.capacity.get(dataset_id)
                victim = None if cap is not None and n > cap else \
                    self._table.claim_lru(dataset=dataset_id, pinned_after=self._pin_cutoff())
            if victim is None:
                return False
            self._discard(victim, "evictions")

    def _make_room(self, tier: Tier, n: int) -> bool:
        """Reserve `n` bytes in `tier`, pushing its LRU blocks down until they fit."""
        while True:
            with self._lock:
                if self._table.reserve_tier(tier.name, n):
                    return True
                victim = self._table.claim_lru(tier=tier.name)
            if victim is None or not self._push_down(victim):
                return False  # the rest is busy, or pinned with nowhere to go

    # --- moving blocks between tiers ------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Under the lock: a copy of the counters, by name (see COUNTERS)."""
        return dict(self._counters)

    def _next_tier(self, block: Block) -> Tier | None:
        tiers = self._tiers_of(block.key.dataset_id)
        allowed = {t.name for t in (tiers if tiers is not None else self.tiers)}
        for tier in self.tiers[self._order[block.tier] + 1:]:
            if tier.name in allowed and self._health.in_service(tier.name):
                return tier
        return None

    def _push_down(self, block: Block) -> bool:
        """Demote a claimed block to the next tier its dataset allows, else evict it unless it
        is pinned (then it stays, un-claimed). True when the block left its tier."""
        nxt = self._next_tier(block)
        if nxt is not None and block.length <= nxt.size and self._make_room(nxt, block.length):
            result = self.relocate(block, nxt)
            if result is CopyResult.COPIED:
                self.count("demotions")
                return True
            if result is not CopyResult.WRITE_FAILED:
                return True  # it was corrupt or gone, and is dropped
        with self._lock:
            if block.atime > self._pin_cutoff():
                self.release(block)
                return False
        self._discard(block, "evictions")
        return True

    def demote_until(self, tier: Tier, target: int) -> None:
        """Push LRU blocks out of `tier` until its files hold at most `target` bytes (a block
        that leaves an extent frees its bytes only with the extent's last one)."""
        while True:
            with self._lock:
                if self._table.tier_stored(tier.name) <= target:
                    return
                victim = self._table.claim_lru(tier=tier.name)
            if victim is None or not self._push_down(victim):
                return

    def promotion_target(self, ds: Dataset, block: Block) -> Tier | None:
        """Under the engine lock, on a hit: claim the block and reserve room for it in the
        dataset's fastest tier if it sits lower and that tier has room below its high mark."""
        if block.busy or not ds.tiers:
            return None
        top = ds.tiers[0]
        if (self._order[block.tier] <= self._order[top.name]
                or not self._health.in_service(top.name)):
            return None
        if not self._table.reserve_tier(top.name, block.length, int(top.high * top.size)):
            return None
        self._table.claim(block)
        return top

    def start_promotions(self, promotions: list[tuple[Block, Tier]],
                         submit: Callable[..., bool]) -> None:
        """Outside the lock: hand each (block, tier) that `promotion_target` claimed to
        `submit(promote, block, tier)`; one it refuses (busy, closed) is let go at once."""
        for block, top in promotions:
            if not submit(self._promote, block, top):
                with self._lock:
                    self._table.unreserve_tier(top.name, block.length)
                    self.release(block)

    def _promote(self, block: Block, top: Tier) -> None:
        result = self.relocate(block, top)
        if result is CopyResult.COPIED:
            self.count("promotions")
        elif result is CopyResult.WRITE_FAILED:
            with self._lock:
                self.release(block)

    def relocate(self, block: Block, dst: Tier, extent: str | None = None,
                 offset: int = 0) -> CopyResult:
        """Copy a claimed block into `dst` (room reserved), move its row, let go of the old
        file: to a new block file, or into `extent` at `offset`. A corrupt or vanished block
        is dropped; on a write failure (the tier's or the index's) it stays claimed."""
        src = self._tier[block.tier]
        new_file = extent or new_file_name(block.key)
        result = copy_block(block, src, dst, new_file, offset if extent else None)
        if result is CopyResult.COPIED:
            try:
                self._index.move(block.key, dst.name, new_file, offset)
            except BaseException as e:
                if extent is None:
                    remove_quietly(block_path(dst, new_file))
                with self._lock:
                    self._table.unreserve_tier(dst.name, block.length)
                    if isinstance(e, IndexWriteFailed):
                        return CopyResult.WRITE_FAILED  # the row still names the old file
                    self.release(block)
                raise
            old_file = block.file
            with self._lock:
                self._table.unreserve_tier(dst.name, block.length)
                freed = self._table.move(block, dst.name, new_file, offset)
                self.release(block)
            self.free(src, old_file, freed)
            return result
        with self._lock:
            self._table.unreserve_tier(dst.name, block.length)
        if result is CopyResult.WRITE_FAILED:
            self.count("tier_write_failures")
            self._health.fault(dst, None, block.length)
        else:
            _log.warning("block.dropped", reason=result.value, tier=src.name,
                         dataset=block.key.dataset_id, block=block.key.index)
            self._discard(block, "checksum_failures" if result is CopyResult.CORRUPT else None)
        return result

    # --- dropping blocks --------------------------------------------------------------------

    def drop_corrupt(self, key: BlockKey, counter: str | None = "checksum_failures") -> None:
        """A reader saw a bad copy of `key` (or, `counter` None, a writer made it stale): drop
        it. If a move has the block, wait: a move that copied it verified the bytes."""
        with self._lock:
            block = self._table.get(key)
            file = block.file if block is not None else None
            while block is not None and not self._table.claim(block):
                self._lock.wait(1.0)
                if self._table.get(key) is not block or block.file != file:
                    return  # dropped, or moved to a verified copy, meanwhile
        if block is not None:
            self._discard(block, counter)

    def shrink_dataset(self, dataset_id: str) -> None:
        """Evict a dataset's LRU blocks until it fits its (possibly lowered) capacity."""
        while True:
            with self._lock:
                cap = self._table.capacity.get(dataset_id)
                if cap is None or self._table.dataset_used.get(dataset_id, 0) <= cap:
                    return
                victim = self._table.claim_lru(dataset=dataset_id,
                                               pinned_after=self._pin_cutoff())
            if victim is None:
                return
            self._discard(victim, "evictions")

    def _discard(self, block: Block, counter: str | None) -> None:
        """Drop a claimed block: row first (committed), then its file. Its bytes count against
        the tier until the file is unlinked, so the disk never holds more than the tier size.
        If the index refuses the delete, the row stays behind: the next start drops it."""
        try:
            self._index.delete(block.key)
        except IndexWriteFailed:
            pass
        except BaseException:
            with self._lock:
                self.release(block)
            raise
        with self._lock:
            freed = self._table.remove(block)
            self._lock.notify_all()
            if counter:
                self._counters[counter] += 1
        self.free(self._tier[block.tier], block.file, freed)

    def free(self, tier: Tier, file: str, freed: int | None) -> None:
        """Unlink a tier file that lost its last reference (`freed` is not None), then stop
        counting its bytes: the disk never holds more than the tier's size."""
        if freed is None:
            return
        remove_quietly(block_path(tier, file))
        with self._lock:
            self._table.release_held(tier.name, freed)
            self._growing.freed(tier.name, file)

    def _pin_cutoff(self) -> float:
        """Blocks handed out after this instant are pinned: not deleted, only moved."""
        return self._clock() - self._pin_seconds

    def release(self, block: Block) -> None:
        """Under the lock: un-claim a block and wake whoever waits for it."""
        self._table.release(block)
        self._lock.notify_all()

    def count(self, counter: str) -> None:
        """Count one event of `counter` (see COUNTERS)."""
        with self._lock:
            self._counters[counter] += 1
