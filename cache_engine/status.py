"""What `eddy status` shows per dataset: source size, cached bytes, capacity, phase, hit ratio.

The source's total size comes from a background walk of the dataset (`SizeScan`), shown as
unknown ("calculating") until it ends and reused afterwards: for an immutable dataset forever,
otherwise until its metadata TTL (at least `MIN_RESCAN_SECONDS`) has passed. Cached bytes
count each block once, whatever tier holds it, and only blocks of the file versions the
walk saw, so the percentage is exact: an old version's blocks are not "cached" data.

Phases:
    Pending            the size walk has not finished and nothing else is known yet
    Loading            a preload job is running
    Ready              the dataset is readable (and its size known)
    CapacityReached    the last preload stopped because the dataset's capacity is full
    SourceUnavailable  the last request to the source failed as unreachable
"""

from __future__ import annotations

import bisect
import enum
import functools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eddy.base import log
from eddy.base.uris import scrub_uris

from .types import JobState, PreloadProgress
from .ufs.base import walk_files

if TYPE_CHECKING:
    from .dataset import Dataset
    from .table import BlockTable
    from .tiers import Tier
    from .ufs.base import Entry

MIN_RESCAN_SECONDS = 600.0  # a walk of a big bucket is not free: at most every 10 min
_log = log.get("cache_engine.status")


class Phase(enum.Enum):
    """A dataset's phase, as Fluid users know it (see the module docstring)."""

    PENDING = "Pending"
    LOADING = "Loading"
    READY = "Ready"
    CAPACITY_REACHED = "CapacityReached"
    SOURCE_UNAVAILABLE = "SourceUnavailable"


@dataclass(frozen=True)
class DatasetStatus:
    """One dataset's `eddy status` row: `DatasetStatuses.row` builds it, `wire.status_to_pb`
    sends it, the CLI prints it."""

    dataset_id: str
    source: str  # "" for a dataset with cached blocks that no volume opened since a restart
    volumes: tuple[str, ...]
    ufs_total_bytes: int | None  # None while calculating
    ufs_files: int | None
    cached_bytes: int
    capacity: int | None
    phase: Phase
    hits: int
    misses: int
    tier_bytes: dict[str, int] = field(default_factory=dict)
    preload: PreloadProgress | None = None
    message: str = ""

    @property
    def cached_percent(self) -> float | None:
        if self.ufs_total_bytes is None:
            return None
        if self.ufs_total_bytes == 0:
            return 100.0
        return 100.0 * self.cached_bytes / self.ufs_total_bytes

    @property
    def hit_ratio(self) -> float | None:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


class SizeScan:
    """One background walk of a dataset: every file's path, version and size."""

    def __init__(self, list_dir: Callable[[str], list], clock: Callable[[], float] = time.time):
        self._list = list_dir
        self._clock = clock
        self.files: dict[tuple[str, str], int] | None = None  # (path, version) -> size
        self.total: int | None = None
        self.error = ""
        self.finished: float | None = None
        self._thread = threading.Thread(target=self._run, name="size-scan", daemon=True)

    def start(self) -> SizeScan:
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stale(self, ttl: float | None) -> bool:
        if self.running or self.finished is None:
            return False
        if self.error:
            return self._clock() - self.finished >= MIN_RESCAN_SECONDS
        if ttl is None:
            return False
        return self._clock() - self.finished >= max(ttl, MIN_RESCAN_SECONDS)

    def _run(self) -> None:
        try:
            files = {(e.path, e.version): e.size for e in walk_files(self._list)}
        except Exception as e:  # noqa: BLE001 - shown in the status, retried later
            self.error = str(e) or type(e).__name__
            _log.warning("size_scan.failed", error=self.error)
        else:
            self.files, self.total = files, sum(files.values())
        self.finished = self._clock()


class Histogram:
    """Counts of observations per upper bound (cumulative on read), their sum and count.

    Not thread-safe: the engine's lock guards it."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """[(upper bound, observations <= bound)], ending with (inf, count)."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self._counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def phase_of(source_error: str, preload: PreloadProgress | None, size_known: bool) -> Phase:
    if source_error:
        return Phase.SOURCE_UNAVAILABLE
    if preload is not None and preload.state is JobState.RUNNING:
        return Phase.LOADING
    if preload is not None and preload.state is JobState.CAPACITY_REACHED:
        return Phase.CAPACITY_REACHED
    return Phase.READY if size_known else Phase.PENDING



class DatasetStatuses:
    """Owns the size walks (one `SizeScan` per dataset) and builds the `eddy status` rows.

    The engine's `status` and `dataset_status` call it. It reads the engine's `BlockTable`
    under the engine's lock (cached bytes per tier, of the files the walk saw), and asks the
    engine through callables: `list_dir(dataset_id, path)` and `preload(dataset_id)` (the latest
    job's progress).
    """

    def __init__(self, tiers: list[Tier], table: BlockTable, lock: threading.Condition,
                 list_dir: Callable[[str, str], list[Entry]],
                 preload: Callable[[str], PreloadProgress | None],
                 clock: Callable[[], float] = time.monotonic):
        self._tiers = tiers
        self._clock = clock
        self._table = table
        self._lock = lock
        self._list = list_dir
        self._preload = preload
        self._scans: dict[str, SizeScan] = {}  # dataset id -> its latest size walk

    def scan(self, ds: Dataset) -> SizeScan:
        """The dataset's size walk; a new one starts if there is none or it is stale."""
        with self._lock:
            scan = self._scans.get(ds.id)
            if scan is None or scan.stale(ds.meta.ttl):
                scan = self._scans[ds.id] = SizeScan(functools.partial(self._list, ds.id),
                                                     self._clock)
                scan.start()
            return scan

    def rows(self, datasets: Mapping[str, Dataset], wait: float | None) -> list[DatasetStatus]:
        """One row per dataset open (`datasets`) or holding blocks; `wait` seconds (None:
        until done) for the size walks."""
        scans = [self.scan(ds) for ds in list(datasets.values())]
        if wait != 0:
            for scan in scans:
                scan.wait(wait)
        with self._lock:
            ids = sorted(set(datasets) | {k for k, v in self._table.dataset_used.items() if v})
        return [self.row(ds_id, datasets.get(ds_id)) for ds_id in ids]

    def row(self, dataset_id: str, ds: Dataset | None) -> DatasetStatus:
        """One dataset's row (`ds` None: blocks from before a restart, not reopened since)."""
        scan = self._scans.get(dataset_id)
        files = scan.files if scan is not None else None
        tier_bytes = {t.name: 0 for t in self._tiers}
        with self._lock:
            for block in self._table.dataset_blocks(dataset_id).values():
                if files is None or (block.key.path, block.key.version) in files:
                    tier_bytes[block.tier] += block.length
            hits, misses = (ds.hits, ds.misses) if ds is not None else (0, 0)
        preload = self._preload(dataset_id)
        source_error = ds.source_error if ds is not None else ""
        return DatasetStatus(
            dataset_id=dataset_id, source=ds.spec.source.shown if ds is not None else "",
            volumes=ds.volumes if ds is not None else (),
            ufs_total_bytes=scan.total if scan is not None else None,
            ufs_files=len(files) if files is not None else None,
            cached_bytes=sum(tier_bytes.values()),
            capacity=ds.capacity() if ds is not None else None,
            phase=phase_of(source_error, preload, files is not None),
            hits=hits, misses=misses, tier_bytes=tier_bytes, preload=preload,
            message=scrub_uris(source_error or (scan.error if scan is not None else "")))
