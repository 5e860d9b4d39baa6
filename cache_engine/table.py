"""The engine's in-memory mirror of the block index, with LRU order and space accounting.

Hits are answered from here without touching SQLite. Space is accounted as `used` (blocks in
the table) plus `reserved` (blocks being written or moved in), plus a tier's `held` bytes
(below): a writer reserves before it writes, so a tier's size and a dataset's capacity hold as
hard limits under concurrent writers. LRU order is exact: per tier and per dataset, a heap of
(access counter, key) with lazy deletion of stale entries, so a block moved between tiers
keeps its place in the order.

Rows may share a file (an extent holds every block of one file version): the table counts
the references to each tier file, rows and writers, and the bytes of rows that left a file
that is still referenced. Those bytes stay counted against the tier (`tier_held`) until the
file's last reference goes and it is unlinked (`release_held`). `tier_stored` is what a tier's
files hold: its rows and its held bytes.

Not thread-safe: the engine's lock guards every call, and no call does I/O.
"""

from __future__ import annotations

import heapq

from .blocks import Block, BlockKey, block_path
from .tiers import Tier
from .types import CachedBlock

_SLACK = 64  # stale heap entries tolerated beyond 2x the live ones before a rebuild


class BlockTable:
    """The in-memory mirror of the block index: rows, LRU heaps, space used and reserved.

    The engine owns it and its lock; the engine's hit path, `Placement`, `Extents`,
    `BlockFetcher`, `Maintenance`, `PreloadRoom` and the status and statistics read or change
    it, always under that lock (see the module docstring).
    """

    def __init__(self, tiers: list[Tier]):
        self.tiers = {t.name: t for t in tiers}
        self.blocks: dict[BlockKey, Block] = {}
        self.seq = 0
        self.dirty: dict[BlockKey, int] = {}  # access counters not yet written to the index
        self._by_tier: dict[str, dict[BlockKey, Block]] = {t.name: {} for t in tiers}
        self._by_dataset: dict[str, dict[BlockKey, Block]] = {}
        self._tier_lru: dict[str, list[tuple[int, BlockKey]]] = {t.name: [] for t in tiers}
        self._dataset_lru: dict[str, list[tuple[int, BlockKey]]] = {}
        self.tier_used = {t.name: 0 for t in tiers}
        self.tier_reserved = {t.name: 0 for t in tiers}  # writes in flight
        self.tier_held = {t.name: 0 for t in tiers}  # in files, but in no row
        self.dataset_used: dict[str, int] = {}
        self.dataset_reserved: dict[str, int] = {}
        self.capacity: dict[str, int | None] = {}
        self._refs: dict[tuple[str, str], int] = {}  # (tier, file) -> rows + writers
        self._held: dict[tuple[str, str], int] = {}  # (tier, file) -> bytes of rows gone
        self._file_blocks: dict[tuple[str, str, str], int] = {}  # file version -> blocks

    # --- the mirror -------------------------------------------------------------------------

    def get(self, key: BlockKey) -> Block | None:
        return self.blocks.get(key)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def add(self, block: Block) -> None:
        """Add a block whose `seq` is already set (new: `next_seq()`, loaded: its row's)."""
        ds = block.key.dataset_id
        self.seq = max(self.seq, block.seq)
        self.blocks[block.key] = block
        self._by_tier[block.tier][block.key] = block
        self._by_dataset.setdefault(ds, {})[block.key] = block
        self.tier_used[block.tier] += block.length
        self.dataset_used[ds] = self.dataset_used.get(ds, 0) + block.length
        self.ref_file(block.tier, block.file)
        version = block.key[:3]
        self._file_blocks[version] = self._file_blocks.get(version, 0) + 1
        self._push(block)

    def restore(self, blocks: list[Block], held: dict[tuple[str, str], int]) -> None:
        """Load what recovery kept at start: its rows (of tiers still configured) and the
        bytes of extents that no row covers, as (tier, file) -> bytes."""
        for block in blocks:
            if block.tier in self.tiers:
                self.add(block)
        for (tier, file), n in held.items():
            self.hold_file(tier, file, n)

    def remove(self, block: Block) -> int | None:
        """Take the block's row out; what its file may free now (see `unref_file`)."""
        ds = block.key.dataset_id
        del self.blocks[block.key]
        del self._by_tier[block.tier][block.key]
        del self._by_dataset[ds][block.key]
        self.tier_used[block.tier] -= block.length
        self.dataset_used[ds] -= block.length
        self.dirty.pop(block.key, None)
        version = block.key[:3]
        self._file_blocks[version] -= 1
        if not self._file_blocks[version]:
            del self._file_blocks[version]
        return self.unref_file(block.tier, block.file, block.length)

    def move(self, block: Block, tier: str, file: str, offset: int = 0) -> int | None:
        """Point the row at another file; what its old file may free now (`unref_file`)."""
        del self._by_tier[block.tier][block.key]
        self.tier_used[block.tier] -= block.length
        old_tier, old_file = block.tier, block.file
        block.tier, block.file, block.offset = tier, file, offset
        self._by_tier[tier][block.key] = block
        self.tier_used[tier] += block.length
        self.ref_file(tier, file)
        return self.unref_file(old_tier, old_file, block.length)

    def file_blocks(self, dataset_id: str, path: str, version: str) -> int:
        """How many blocks of this file version are cached."""
        return self._file_blocks.get((dataset_id, path, version), 0)

    def touch(self, block: Block, now: float) -> None:
        block.seq = self.next_seq()
        block.atime = now
        self.dirty[block.key] = block.seq
        if not block.busy:
            self._push(block)

    def take_dirty(self) -> list[tuple[BlockKey, int]]:
        out, self.dirty = list(self.dirty.items()), {}
        return out

    def tier_blocks(self, tier: str) -> dict[BlockKey, Block]:
        return self._by_tier[tier]

    def dataset_blocks(self, dataset_id: str) -> dict[BlockKey, Block]:
        return self._by_dataset.get(dataset_id, {})

    def cached(self, dataset_id: str | None = None) -> list[CachedBlock]:
        """What is cached, of one dataset or of all, with each block's tier file path."""
        found = (self.blocks.values() if dataset_id is None
                 else self.dataset_blocks(dataset_id).values())
        return [CachedBlock(b.key, b.tier, block_path(self.tiers[b.tier], b.file), b.length,
                            b.checksum, b.offset) for b in found]

    # --- claiming blocks for a move or a drop ---------------------------------------------

    def claim(self, block: Block) -> bool:
        """Mark `block` busy; False if another thread already has it."""
        if block.busy or self.blocks.get(block.key) is not block:
            return False
        block.busy = True
        return True

    def release(self, block: Block) -> None:
        """The move failed or finished: the block is a victim candidate again."""
        block.busy = False
        if self.blocks.get(block.key) is block:
            self._push(block)

    def claim_lru(self, tier: str | None = None, dataset: str | None = None,
                  pinned_after: float = float("inf")) -> Block | None:
        """Claim the least recently used idle block of `tier` (or of `dataset`), unless even
        that one was handed out after `pinned_after` (then every other one was too)."""
        heap = self._tier_lru[tier] if tier is not None else self._dataset_lru.get(dataset, [])
        while heap:
            seq, key = heapq.heappop(heap)
            block = self.blocks.get(key)
            if block is None or block.busy or block.seq != seq:
                continue  # gone, claimed (re-pushed on release), or touched since
            if tier is not None and block.tier != tier:
                continue
            if block.atime > pinned_after:
                heapq.heappush(heap, (seq, key))
                return None
            block.busy = True
            return block
        return None

    def _push(self, block: Block) -> None:
        entry = (block.seq, block.key)
        for heap, live in ((self._tier_lru[block.tier], self._by_tier[block.tier]),
                           (self._dataset_lru.setdefault(block.key.dataset_id, []),
                            self._by_dataset[block.key.dataset_id])):
            heapq.heappush(heap, entry)
            if len(heap) > 2 * len(live) + _SLACK:
                heap[:] = [(b.seq, b.key) for b in live.values() if not b.busy]
                heapq.heapify(heap)

    # --- space ------------------------------------------------------------------------------

    def tier_room(self, tier: str) -> int:
        return self.tiers[tier].size - self.tier_stored(tier) - self.tier_reserved[tier]

    def reserve_tier(self, tier: str, n: int, limit: int | None = None) -> bool:
        """Reserve `n` bytes if used + held + reserved + n stays within `limit` (default: the
        size)."""
        limit = self.tiers[tier].size if limit is None else limit
        if self.tier_stored(tier) + self.tier_reserved[tier] + n > limit:
            return False
        self.tier_reserved[tier] += n
        return True

    def ref_file(self, tier: str, file: str) -> None:
        """One more row or writer uses this tier file: it is not unlinked meanwhile."""
        self._refs[(tier, file)] = self._refs.get((tier, file), 0) + 1

    def unref_file(self, tier: str, file: str, n: int = 0) -> int | None:
        """A row of `n` bytes (or a writer: 0) left the file; its bytes are held against the
        tier. None while the file is still in use; else the file must be unlinked, and the
        bytes to `release_held` once it is."""
        key = (tier, file)
        self.tier_held[tier] += n
        left = self._refs[key] - 1
        if left:
            self._refs[key] = left
            self._held[key] = self._held.get(key, 0) + n
            return None
        del self._refs[key]
        return self._held.pop(key, 0) + n

    def hold_file(self, tier: str, file: str, n: int) -> None:
        """Count `n` bytes of a referenced file that no row covers (after a restart)."""
        self.tier_held[tier] += n
        self._held[(tier, file)] = self._held.get((tier, file), 0) + n

    def release_held(self, tier: str, n: int) -> None:
        """A file `unref_file` let go of is unlinked: its `n` bytes are no longer held."""
        self.tier_held[tier] -= n

    def tier_stored(self, tier: str) -> int:
        """Bytes the tier's files hold: its rows' and its held bytes (not writes in flight)."""
        return self.tier_used[tier] + self.tier_held[tier]

    def over_high(self, tier: str) -> bool:
        """Whether the tier's files hold more than its high mark: maintenance demotes then."""
        t = self.tiers[tier]
        return self.tier_stored(tier) > t.high * t.size

    def unreserve_tier(self, tier: str, n: int) -> None:
        self.tier_reserved[tier] -= n

    def reserve_dataset(self, dataset_id: str, n: int) -> bool:
        cap = self.capacity.get(dataset_id)
        used = self.dataset_used.get(dataset_id, 0)
        reserved = self.dataset_reserved.get(dataset_id, 0)
        if cap is not None and used + reserved + n > cap:
            return False
        self.dataset_reserved[dataset_id] = reserved + n
        return True

    def unreserve_dataset(self, dataset_id: str, n: int) -> None:
        self.dataset_reserved[dataset_id] -= n
