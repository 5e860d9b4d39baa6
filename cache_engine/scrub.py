"""Extents on disk tiers: when the kernel may read one unchecked, and the scrubber that checks.

The kernel reads an extent handed to a mount (FUSE passthrough) without eddy seeing a byte, so
a disk extent is handed out only while a recent check vouches for it. The rule:

- An extent in a tier held in RAM is trusted as built (extents.py): nothing rots there.
- An extent on a disk tier is handed to an open only while its last check is at most `trust`
  seconds old. A check is the write of its bytes (each block's checksum was verified in memory
  just before: growing.py, `Extents.build`; the first block's write dates the extent) or a
  scrub: every block read back from the tier and compared with its checksum.
- The scrubber checks each disk extent again once its last check is `trust / 2` old, the
  oldest first, reading at most `rate` bytes a second.
- A check outlives a restart as an extended attribute of the extent file (`stamp`): when its
  last block landed (dated by its first write) and after every good scrub, with the file's
  mtime then. A restart takes it back unless the file was written since (its mtime moved) or
  has no stamp (a filesystem without user xattrs): such an extent waits for a scrub.
- A block a reader finds bad (its own checksum) is dropped and fetched anew elsewhere, but
  its bytes stay in the extent, where a file the kernel holds open still reads them: the
  extent is trusted no more and scrubbed at once, that block included (`suspect`).
- A block a scrub finds bad is rewritten in place with the same bytes read again from the
  source (their checksum must match the row's), so a file the kernel holds open reads right
  from then on. If the source cannot give them (gone, changed, unreachable, the dataset
  closed), the extent is truncated to nothing and its blocks are dropped: a file held open
  then ends early (read) or faults (mmap) rather than serving the bad byte again, and the next
  open reads block by block from fresh copies.

So a byte that changes on disk after a check at time c reaches no open made after c + trust,
and a file already open at most until the next scrub of its extent: before c + trust while
the scrubber keeps up, that is while the disk extents' bytes take less than trust / 2 to read
at `rate` (`extents_overdue` in the statistics counts extents past trust).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from eddy.base import log

from .blocks import Block, BlockKey, block_path, checksum, is_extent, read_block, rewrite_in_extent
from .dataset import Dataset
from .fetch import read_source_block
from .placement import Placement
from .table import BlockTable

_log = log.get("cache_engine.scrub")
IDLE_SECONDS = 1.0  # how often an idle scrubber looks for a check that came due
STAMP = "user.eddy.checked"  # "<unix time of the check> <the file's mtime_ns then>"


def stamp(path: str, checked: float) -> None:
    """Record on an extent file that it was good at `checked` (unix time), as it is now."""
    try:
        mtime_ns = os.stat(path).st_mtime_ns
        os.setxattr(path, STAMP, f"{checked:.3f} {mtime_ns}".encode())
    except OSError:
        pass  # gone, or no user xattrs here: after a restart it waits for a scrub


def stamped(path: str) -> float | None:
    """When the extent file was last found good (unix time), unless written since."""
    try:
        checked, mtime_ns = os.getxattr(path, STAMP).decode().split()
        return float(checked) if os.stat(path).st_mtime_ns == int(mtime_ns) else None
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ScrubPolicy:
    """How long a check of a disk extent vouches for it, and how fast the scrubber reads."""

    trust: float = 3600.0  # seconds; 0: no disk extent goes to the kernel, none is scrubbed
    rate: int = 64 << 20  # bytes per second

    def __post_init__(self):
        if not self.trust >= 0 or self.rate <= 0:
            raise ValueError(f"extent trust ({self.trust} s) must be 0 or more and scrub rate "
                             f"({self.rate} B/s) positive")


@dataclass(slots=True)
class _Extent:
    version: tuple[str, str, str]  # (dataset id, path, version): the file version it holds
    blocks: int  # how many blocks the file version has
    checked: float  # engine clock of its last good check; -inf: never
    # Blocks a reader found bad and dropped: their bytes stay in the extent, where a file the
    # kernel holds open still reads them, until a scrub mends them or gives the extent up.
    suspects: list[Block] = field(default_factory=list)


class ExtentChecks:
    """The disk extents and when each was last checked. Every method runs under the engine's
    lock; `in_ram` names the tiers held in RAM (their extents are trusted as built)."""

    def __init__(self, in_ram: frozenset[str], clock: Callable[[], float], policy: ScrubPolicy):
        self.in_ram = in_ram
        self.policy = policy
        self._clock = clock
        self._extents: dict[tuple[str, str], _Extent] = {}

    def restore(self, blocks: list[Block], stamps: dict[tuple[str, str], float | None]) -> None:
        """Register the disk extents the rows of `blocks` name after a restart, checked when
        their `stamps` say (unix time; None: never)."""
        now, wall = self._clock(), time.time()
        for block in blocks:
            checked = stamps.get((block.tier, block.file))
            at = float("-inf") if checked is None else now - max(wall - checked, 0.0)
            self.wrote(block.tier, block.file, block.key, block.key.index + 1, at)

    def disk_extents(self, table: BlockTable) -> list[Block]:
        """The rows that name an extent on a disk tier."""
        return [b for b in table.blocks.values()
                if b.tier not in self.in_ram and is_extent(b.file)]

    def wall(self, tier: str, file: str) -> float | None:
        """The unix time of the extent's last check; None if it is not a known disk extent."""
        entry = self._extents.get((tier, file))
        if entry is None or entry.checked == float("-inf"):
            return None
        return time.time() - (self._clock() - entry.checked)

    def wrote(self, tier: str, file: str, key: BlockKey, blocks: int,
              at: float | None = None) -> None:
        """Verified bytes of `key`'s file version (`blocks` blocks) go into the extent `file`:
        its first write (or `at`) dates its check."""
        if tier in self.in_ram:
            return
        entry = self._extents.get((tier, file))
        if entry is None:
            self._extents[(tier, file)] = _Extent(key[:3], blocks,
                                                  self._clock() if at is None else at)
        else:
            entry.blocks = max(entry.blocks, blocks)

    def trusted(self, tier: str, file: str) -> bool:
        """Whether the kernel may read this extent unchecked now."""
        if tier in self.in_ram:
            return True
        entry = self._extents.get((tier, file))
        return (entry is not None and self.policy.trust > 0
                and self._clock() - entry.checked <= self.policy.trust)

    def forget(self, tier: str, file: str) -> None:
        """The tier file was unlinked."""
        self._extents.pop((tier, file), None)

    def due(self) -> tuple[str, str, _Extent] | None:
        """The disk extent checked longest ago, if that is at least trust / 2 ago."""
        if not self._extents or not self.policy.trust:
            return None
        (tier, file), entry = min(self._extents.items(), key=lambda item: item[1].checked)
        if self._clock() - entry.checked < self.policy.trust / 2:
            return None
        return tier, file, entry

    def checked(self, tier: str, file: str, at: float, blocks: list[Block]) -> None:
        """A scrub that started `at` found `blocks` of the extent good (or mended them)."""
        entry = self._extents.get((tier, file))
        if entry is not None:
            entry.checked = max(entry.checked, at)
            entry.suspects = [b for b in entry.suspects if b not in blocks]

    def suspect(self, block: Block) -> None:
        """A reader found `block` bad: if it sits in a disk extent, the extent is trusted no
        more and scrubbed first, this block's bytes included (its row is about to go)."""
        entry = self._extents.get((block.tier, block.file))
        if entry is not None:
            entry.suspects.append(replace(block))
            entry.checked = float("-inf")

    def overdue(self) -> int:
        """How many disk extents are past their trust: no open gets them until a scrub."""
        if not self.policy.trust:
            return 0  # none is ever handed out
        cutoff = self._clock() - self.policy.trust
        return sum(1 for entry in self._extents.values() if entry.checked < cutoff)


class Scrubber:
    """The background thread that checks disk extents (`ExtentChecks.due`), one at a time.

    It shares the engine's lock and `BlockTable`; `datasets` finds an open dataset by id (to
    repair from its source), `placement` drops the blocks of an extent it gives up on and
    counts `extents_checked`, `extent_repairs` and `extent_failures`."""

    def __init__(self, checks: ExtentChecks, table: BlockTable, lock: threading.Condition,
                 placement: Placement, datasets: Callable[[str], Dataset | None],
                 clock: Callable[[], float]):
        self._checks = checks
        self._table = table
        self._lock = lock
        self._places = placement
        self._datasets = datasets
        self._clock = clock
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._checks.policy.trust and any(t.name not in self._checks.in_ram
                                             for t in self._table.tiers.values()):
            self._thread = threading.Thread(target=self._loop, name="extent-scrubber",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                if self.scrub_one():
                    continue
            except Exception:  # a bug must not stop the checks for the rest of the run
                _log.exception("scrub.failed")
            self._closing.wait(IDLE_SECONDS)

    def scrub_one(self) -> bool:
        """Check the extent that is most due; False if none is."""
        with self._lock:
            due = self._checks.due()
        if due is None:
            return False
        tier, file, entry = due
        started = self._clock()
        with self._lock:
            blocks = self._blocks(tier, file, entry)
        good = self._check(tier, file, entry, blocks)
        with self._lock:
            if good:
                self._checks.checked(tier, file, started, blocks)
            elif not self._closing.is_set():
                self._checks.forget(tier, file)  # gone meanwhile, or given up
        if good:
            self.stamp(tier, file)
        self._places.count("extents_checked")
        return True

    def stamp(self, tier: str, file: str) -> None:
        """Record the last check of a disk extent on its file (`stamp`): a restart finds it."""
        with self._lock:
            wall = self._checks.wall(tier, file)
        if wall is not None:
            stamp(block_path(self._table.tiers[tier], file), wall)

    def _blocks(self, tier: str, file: str, entry: _Extent) -> list[Block]:
        """Under the lock: the rows that still name this extent, and its suspects."""
        return self._rows(tier, file, entry) + entry.suspects

    def _rows(self, tier: str, file: str, entry: _Extent) -> list[Block]:
        """Under the lock: copies of the rows that still name this extent. Copies: a move (a
        compaction, a demotion) changes a row's file and offset in place, and a check reads
        where the block was in this file."""
        keys = (BlockKey(*entry.version, i) for i in range(entry.blocks))
        return [replace(b) for b in map(self._table.get, keys)
                if b is not None and b.tier == tier and b.file == file]

    def _check(self, tier: str, file: str, entry: _Extent, blocks: list[Block]) -> bool:
        """Read `blocks` of the extent back at `rate`; repair or give up on a bad one.
        False if the extent went meanwhile or was given up."""
        path = block_path(self._table.tiers[tier], file)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        start, done = time.monotonic(), 0
        try:
            for block in blocks:
                data = os.pread(fd, block.length, block.offset)
                bad = len(data) != block.length or checksum(data) != block.checksum
                if bad and not self._repair(block):
                    self._give_up(tier, file, entry, block)
                    return False
                done += block.length
                ahead = done / self._checks.policy.rate - (time.monotonic() - start)
                if ahead > 0 and self._closing.wait(ahead):
                    return False
        finally:
            os.close(fd)
        return True

    def _repair(self, block: Block) -> bool:
        """Rewrite a bad block of an extent with its bytes read again from the source."""
        key = block.key
        ds = self._datasets(key.dataset_id)
        if ds is None:
            return False
        try:
            data = read_source_block(ds, key, block.length,
                                     time.monotonic() + ds.spec.source_timeout)
        except Exception as e:  # noqa: BLE001 - any source failure means: cannot repair
            _log.warning("scrub.repair_failed", dataset=key.dataset_id, path=key.path,
                         block=key.index, error=str(e))
            return False
        if len(data) != block.length or checksum(data) != block.checksum:
            return False
        tier = self._table.tiers[block.tier]
        try:
            rewrite_in_extent(tier, block.file, block.offset, data)
            if checksum(read_block(tier, block)) != block.checksum:
                return False  # the medium does not keep what it is given
        except OSError:
            return False
        self._places.count("extent_repairs")
        _log.warning("scrub.repaired", dataset=key.dataset_id, path=key.path, block=key.index)
        return True

    def _give_up(self, tier: str, file: str, entry: _Extent, bad: Block) -> None:
        """Truncate the extent (no open file reads its bytes again) and drop its blocks."""
        _log.error("scrub.extent_dropped", dataset=bad.key.dataset_id, path=bad.key.path,
                   block=bad.key.index, tier=tier)
        try:
            os.truncate(block_path(self._table.tiers[tier], file), 0)
        except FileNotFoundError:
            pass
        except OSError as e:  # a file already open keeps reading it: nothing else stops that
            _log.error("scrub.truncate_failed", tier=tier, error=e.strerror)
        self._places.count("extent_failures")
        with self._lock:
            blocks = self._rows(tier, file, entry)
            self._checks.forget(tier, file)
        for block in blocks:
            self._places.drop_corrupt(block.key)
