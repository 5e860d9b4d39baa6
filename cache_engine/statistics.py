"""A typed snapshot of what the engine holds and has done, for metrics and the CLI.

`CacheEngine.statistics()` returns one `EngineStatistics`, taken under the engine's lock, so
the numbers in it agree with each other; like trio's `statistics()` objects it is frozen and
safe to hand out. Metric names (csi/metrics.py) and proto fields are derived from it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .health import TierHealth
    from .table import BlockTable
    from .tiers import Tier


@dataclass(frozen=True, slots=True)
class TierStatistics:
    """One tier: bytes stored, its size, its blocks, bytes reserved for writes in flight,
    bytes held, whether it takes new blocks (see `health.TierHealth`).

    Held bytes belong to blocks that left an extent another block still uses: they stay in
    the extent, counted against the tier, until it goes (a kernel may be reading it), and to
    a file being unlinked. Writes in flight aside, the tier's files hold `used + held` bytes."""

    used: int
    size: int
    blocks: int
    reserved: int
    held: int
    served_bytes: int  # bytes of blocks located in this tier (cache hits), since start
    in_service: bool = True
    faults: int = 0  # times it was taken out of service (a write failed), since start


@dataclass(frozen=True, slots=True)
class DatasetStatistics:
    """One dataset on the node (open, or holding blocks from before a restart)."""

    used: int
    capacity: int | None
    blocks: int
    open: bool


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    """The engine's counters since start, and its tiers and datasets now.

    Built by `CacheEngine.statistics`; read by csi/metrics.py (Prometheus), the engine
    service's Status RPC (tier use for `eddy status`) and tests."""

    tiers: dict[str, TierStatistics]
    datasets: dict[str, DatasetStatistics]
    hits: int
    misses: int
    source_reads: int
    source_bytes: int
    uncached_reads: int
    tier_write_failures: int
    evictions: int
    demotions: int
    promotions: int
    checksum_failures: int
    prefetches: int
    prefetches_skipped: int  # read-ahead not started: the dataset's source slots were needed
    prefetch_open_waits: int  # opens that waited for their file's `prefetch` (prefetchWait)
    prefetch_open_waits_loaded: int  # of them, those whose file was loaded whole in time
    extents_built: int
    extents_served: int
    extents_checked: int  # scrubs of disk extents (scrub.py)
    extent_repairs: int  # bad blocks of disk extents rewritten from the source
    extent_failures: int  # disk extents given up: truncated, their blocks dropped
    extents_overdue: int  # disk extents past their trust now: no passthrough until a scrub
    index_write_failures: int  # writes SQLite refused (disk full, locked, I/O error)
    index_in_memory: bool  # the state disk refused the index at start (`index.BlockIndex`)
    # Source reads of whole blocks: (upper bound in seconds, reads <= it), ending with +inf.
    fetch_seconds: tuple[tuple[float, int], ...]
    fetch_seconds_sum: float


def tier_statistics(tiers: list[Tier], table: BlockTable, served_bytes: dict[str, int],
                    health: TierHealth) -> dict[str, TierStatistics]:
    """Under the engine's lock: every tier's row."""
    return {t.name: TierStatistics(
        used=table.tier_used[t.name], size=t.size, blocks=len(table.tier_blocks(t.name)),
        reserved=table.tier_reserved[t.name], held=table.tier_held[t.name],
        served_bytes=served_bytes[t.name],
        in_service=health.in_service(t.name), faults=health.faults(t.name)) for t in tiers}


def dataset_statistics(table: BlockTable, open_ids: set[str]) -> dict[str, DatasetStatistics]:
    """Under the engine's lock: a row per dataset open (`open_ids`) or holding blocks."""
    ids = open_ids | {k for k, v in table.dataset_used.items() if v}
    return {ds: DatasetStatistics(
        used=table.dataset_used.get(ds, 0), capacity=table.capacity.get(ds),
        blocks=len(table.dataset_blocks(ds)), open=ds in open_ids) for ds in sorted(ids)}
