"""Which files are being read in order, to load their next blocks before they are asked for.

The engine (per dataset, to fetch ahead from the source) and the mount's reader (to pread
ahead from the tiers) both need to tell a sequential reader from a random one. They ask the
same question of the same kind of record, so one tracker answers both, with one bound.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

MAX_TRACKED_FILES = 4096  # files whose last requested block is remembered


class SequentialTracker:
    """The last block requested of each of the most recently read files.

    A request continues a sequential run when it asks for the same block as the one before
    or the next one; with `from_start`, the first request of a file counts too if it is for
    block 0. The least recently read file is forgotten past `max_files`. Not locked: callers
    (`Dataset.sequential` in the engine, `DatasetReader` in a mount) hold their own lock.
    """

    def __init__(self, max_files: int = MAX_TRACKED_FILES):
        self._max_files = max_files
        self._last: OrderedDict[Hashable, int] = OrderedDict()

    def note(self, file: Hashable, index: int, from_start: bool = False) -> bool:
        """Record a request of block `index` of `file`; True when it continues a run."""
        last = self._last.get(file)
        self._last[file] = index
        self._last.move_to_end(file)
        if len(self._last) > self._max_files:
            self._last.popitem(last=False)
        if last is None:
            return from_start and index == 0
        return index in (last, last + 1)
