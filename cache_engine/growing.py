"""Extents filled in place: a file version's blocks written straight to their offsets.

A block stored in a tier, of a file of 2+ blocks that fits in the tier's free room, goes into
one extent file of its version at `index * blockSize` (`Placement.store`), so the file is whole
in one extent (passthrough-ready, extents.py) the moment its last block lands, with no copy
afterwards and nothing a restart could lose: each row names the extent and its offset. On a
disk tier the first write dates the extent's check (scrub.py). Files stored otherwise (moved
between tiers, cached before) are still compacted later by `Extents`.

It shares the engine's lock and `BlockTable`, and does no I/O.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .blocks import BlockKey, new_extent_name

if TYPE_CHECKING:
    from .dataset import Dataset
    from .scrub import ExtentChecks
    from .table import BlockTable
    from .tiers import Tier


class GrowingExtents:
    """Which extent each file version is being filled into, per tier.

    `Placement.store` asks it where a new block goes (`claim`), and tells it when a writer is
    done (`let_go`) and when an extent file was unlinked (`freed`)."""

    def __init__(self, table: BlockTable, lock: threading.Condition, checks: ExtentChecks):
        self._table = table
        self._lock = lock
        self._checks = checks
        self._names: dict[tuple[str, str, str, str], str] = {}  # (tier, file version) -> extent
        self._versions: dict[tuple[str, str], tuple[str, str, str, str]] = {}
        self._written: dict[tuple[str, str], set[int]] = {}  # (tier, extent) -> block indexes

    def claim(self, ds: Dataset, tier: Tier, key: BlockKey, size: int) -> str | None:
        """The extent a new block of a file of `size` goes into in `tier` (room for this
        block reserved), with a writer's reference on it; None: a block file of its own.
        A byte of an extent is written once: a block stored again (dropped, then fetched
        again) gets a file of its own, as a kernel may be reading the extent."""
        if ds.block_count(size) < 2:
            return None
        version = (tier.name, *key[:3])
        with self._lock:
            extent = self._names.get(version)
            if extent is None:
                if size > self._table.tier_room(tier.name) + ds.block_size:
                    return None  # it could not all fit: its blocks would be held, not freed
                extent = self._names[version] = new_extent_name(key)
                self._versions[(tier.name, extent)] = version
                self._written[(tier.name, extent)] = set()
                self._checks.wrote(tier.name, extent, key, ds.block_count(size))
            written = self._written[(tier.name, extent)]
            if key.index in written:
                return None
            written.add(key.index)
            self._table.ref_file(tier.name, extent)
        return extent

    def hold(self, tier: str, extent: str, n: int) -> None:
        """`n` bytes were written into `extent` but no row will cover them."""
        with self._lock:
            self._table.hold_file(tier, extent, n)

    def let_go(self, tier: str, extent: str) -> int | None:
        """A writer is done with `extent`: what it frees (`BlockTable.unref_file`)."""
        with self._lock:
            return self._table.unref_file(tier, extent)

    def freed(self, tier: str, file: str) -> None:
        """Under the lock: a tier file was unlinked; a later block of its version starts a
        new extent."""
        self._checks.forget(tier, file)
        version = self._versions.pop((tier, file), None)
        if version is not None:
            del self._names[version]
            del self._written[(tier, file)]
