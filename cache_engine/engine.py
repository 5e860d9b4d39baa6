"""The node's cache engine: where each block of each open dataset lives, fetching on a miss.

One `CacheEngine` per node serves every volume; a gRPC servicer (`service.py`) wraps it for the
mount daemons, and `eddy mount` uses it in-process. A hit is answered from memory with the
block's file (the caller preads it: no data is copied); a miss reads the block from the source
once however many threads ask (single-flight), writes it into the fastest allowed tier and
records it in the index. No lock is held across source I/O or file copies; space is reserved
before a write, so tier sizes and dataset capacities hold as hard limits. When no tier can take
a block the bytes are returned inline and the failure is counted: a full cache never fails a
read. The engine keeps datasets and lookups; its parts do the rest: `fetch` (misses, read-ahead),
`file_prefetch` (whole files ahead of a reader: `prefetch`), `placement` (store, demote,
promote, evict), `extents` (whole files for the kernel), `maintenance`, `preload`, `status`
rows and `statedir` (one engine per state dir).

    engine = CacheEngine([parse_tier("MEM:/dev/shm/eddy:4Gi")], "/var/lib/eddy")
    info = engine.open_dataset(parse_parameters({"source": "local:///data"}), {})
    entry = engine.stat(info.dataset_id, "train/part-0")
    loc = engine.locate(info.dataset_id, entry.path, entry.version, 0, entry.size)
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from eddy.base import log
from eddy.base.errors import NotFound, Unavailable
from eddy.base.mounttable import in_memory

from . import ufs as ufsmod
from .blocks import Block, BlockKey, prepare_tiers
from .changes import apply_changes
from .dataset import Dataset, dataset_id, open_backend
from .extents import Extents
from .fetch import BlockFetcher, block_length
from .file_prefetch import FilePrefetches
from .growing import GrowingExtents
from .health import TierHealth
from .index import BlockIndex
from .maintenance import Maintenance
from .placement import Placement
from .prefetch import Prefetcher
from .preload import DEFAULT_WORKERS, BlockOutcome, PreloadJob, PreloadRoom, Preloads, PreloadSource
from .recovery import node_key, reconcile
from .scrub import ExtentChecks, ScrubPolicy
from .spec import DatasetSpec
from .statedir import StateDirLock
from .statistics import EngineStatistics, dataset_statistics, tier_statistics
from .status import DatasetStatus, DatasetStatuses
from .table import BlockTable
from .tiers import Tier, check_tier_names, check_tiers
from .types import CachedBlock, DatasetInfo, Location, PreloadProgress
from .ufs.base import Entry, UfsBackend, clean_path

# A block handed out this recently is not evicted or demoted, so the reader that asked can
# still open its file: a cache too small for its concurrent readers serves uncached instead.
PIN_SECONDS = 1.0
# What the engine itself counts (lookups); its parts count the rest.
COUNTERS = ("hits", "misses")
_log = log.get("cache_engine")


class CacheEngine:
    """The node's block cache: datasets, their metadata, block lookups and fetches.

    Called by the engine service (`service.py`, for mount daemons and the CLI), by a mount's
    `reader.DatasetReader` in-process (`eddy mount`), and by the node plugin (`csi/`) for
    volume stats, metrics and preload. It owns the datasets, the hit path of lookups, the
    lock that guards the block table, and the parts the module docstring names.
    """

    def __init__(self, tiers: list[Tier], state_dir: str,
                 open_ufs: Callable[[DatasetSpec, dict], UfsBackend] = ufsmod.open_ufs,
                 clock: Callable[[], float] = time.monotonic, prefetch_workers: int = 8,
                 maintenance: bool = True, maintenance_interval: float = 1.0,
                 pin_seconds: float = PIN_SECONDS,
                 held_in_ram: Callable[[str], bool] = in_memory,
                 scrub: ScrubPolicy = ScrubPolicy()):
        check_tiers(tiers)
        self.tiers = list(tiers)
        self._open_ufs = open_ufs
        self._clock = clock
        os.makedirs(state_dir, 0o700, exist_ok=True)
        self._state_lock = StateDirLock(state_dir)
        try:
            prepare_tiers(self.tiers)
            self._node_key = node_key(state_dir)
            self._index = BlockIndex(os.path.join(state_dir, "index.db"))
        except BaseException:
            self._state_lock.release()
            raise
        recovered = reconcile(self._index, self.tiers)
        self._lock = threading.Condition(threading.Lock())  # notified when a claim ends
        self._table = BlockTable(self.tiers)
        self._datasets: dict[str, Dataset] = {}
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._served_bytes = {t.name: 0 for t in self.tiers}  # block bytes located per tier
        self._table.restore(recovered.blocks, recovered.held)
        self._health = TierHealth(self.tiers)
        self._maintenance = Maintenance(self.tiers, self._table, self._index, self._lock, clock,
                                        self._health)
        checks = ExtentChecks(frozenset(t.name for t in self.tiers if held_in_ram(t.path)),
                              clock, scrub)
        growing = GrowingExtents(self._table, self._lock, checks)
        self._places = Placement(self.tiers, self._table, self._index, self._lock, self._tiers_of,
                                 self._maintenance.wake, clock, pin_seconds, self._health, growing)
        self._prefetcher = Prefetcher(prefetch_workers)
        self._extents = Extents(self._table, self._lock, self._places, checks, self._health,
                                lambda key: self._files.quiet_in(key), self._datasets.get, clock)
        self._fetcher = BlockFetcher(self._table, self._lock, self._places,
                                     self._prefetcher, clock, self._extents.compact_when_whole)
        self._files = FilePrefetches(self._fetcher, self._prefetcher, clock)  # `prefetch`
        self._preloads = Preloads()
        self._room = PreloadRoom(self._table, self._lock)
        self._statuses = DatasetStatuses(self.tiers, self._table, self._lock, self.list,
                                         self._preloads.progress, clock)
        self._closed = False
        _log.info("engine.start", tiers=[t.name for t in self.tiers],
                  blocks=len(recovered.blocks), tmp_removed=recovered.tmp_removed,
                  orphans_removed=recovered.orphans_removed, bytes_freed=recovered.bytes_freed,
                  rows_dropped=recovered.rows_dropped)
        for tier in self.tiers:  # a tier may have shrunk since the last run
            self._places.demote_until(tier, tier.size)
        self._maintenance.start(self._places, maintenance_interval if maintenance else None)
        self._extents.start(background=maintenance)

    # --- datasets and metadata -------------------------------------------------------------

    def open_dataset(self, spec: DatasetSpec, secrets: dict, volume_id: str = "") -> DatasetInfo:
        """Register a dataset read by `volume_id` (idempotent); the newest secrets win. Each
        volume keeps its settings; the dataset applies `dataset.shared_spec` of them until it
        leaves (`release_volume`). Opens that name no volume share one slot: the newest wins."""
        if self._closed:
            raise Unavailable("the cache engine is shutting down")
        check_tier_names(spec.tiers, self.tiers)
        ds_id = dataset_id(spec, secrets, self._node_key)
        backend = open_backend(self._open_ufs, spec, secrets)
        with self._lock:
            ds = self._datasets.get(ds_id)
            if ds is None:
                ds = self._datasets[ds_id] = Dataset(ds_id, spec, self.tiers, backend,
                                                     self._clock, volume_id)
            else:
                ds.join(volume_id, spec, backend)
            self._table.capacity[ds_id] = ds.spec.cache_capacity
        self._places.shrink_dataset(ds_id)
        _log.info("dataset.open", dataset=ds_id, source=spec.source.shown, volume=volume_id,
                  tiers=[t.name for t in ds.tiers], capacity=ds.spec.cache_capacity)
        # The volume's own TTL and read-ahead: its mount applies them.
        return DatasetInfo(ds_id, spec.block_size, spec.metadata_ttl, spec.read_ahead)

    def release_volume(self, volume_id: str) -> None:
        """`volume_id` was unstaged: its settings stop counting for the datasets it read
        (a smaller capacity left behind is enforced at once)."""
        with self._lock:
            changed = [ds for ds in self._datasets.values() if ds.leave(volume_id)]
            for ds in changed:
                self._table.capacity[ds.id] = ds.spec.cache_capacity
        for ds in changed:
            self._places.shrink_dataset(ds.id)
            _log.info("dataset.release", dataset=ds.id, volume=volume_id,
                      capacity=ds.spec.cache_capacity)

    def _dataset(self, dataset_id: str) -> Dataset:
        if (ds := self._datasets.get(dataset_id)) is None:
            raise NotFound(f"dataset {dataset_id} is not open on this node")
        return ds

    def _tiers_of(self, dataset_id: str) -> list[Tier] | None:
        """The tiers an open dataset may use; None if it is not open (for `Placement`)."""
        return ds.tiers if (ds := self._datasets.get(dataset_id)) is not None else None

    def stat(self, dataset_id: str, path: str) -> Entry:
        return self.stat_fresh(dataset_id, path)[0]

    def list(self, dataset_id: str, path: str) -> list[Entry]:
        return self.list_fresh(dataset_id, path)[0]

    def stat_fresh(self, dataset_id: str, path: str) -> tuple[Entry, float]:
        """The entry at `path`, and the seconds it stays fresh (`Dataset.stat_fresh`)."""
        return self._dataset(dataset_id).stat_fresh(clean_path(path))

    def list_fresh(self, dataset_id: str, path: str) -> tuple[list[Entry], float]:
        """A directory's entries, and the seconds they stay fresh (as `stat_fresh`)."""
        return self._dataset(dataset_id).list_fresh(clean_path(path))

    # --- blocks -----------------------------------------------------------------------------

    def locate(self, dataset_id: str, path: str, version: str, index: int,
               file_size: int, following: int = 0, next_files: int = 0) -> Location:
        """Where block `index` of this file version lives; fetched from the source on a miss.

        Asking for more saves a reader round trips (each block answered for counts as a hit
        now): `following` adds up to that many of the next blocks, as far as they are cached
        without a gap; `next_files`, for block 0 of a file that continues a scan of its folder
        (see `Dataset.next_files`), adds the cached first blocks of up to that many next files.
        """
        ds = self._dataset(dataset_id)
        key = BlockKey(dataset_id, clean_path(path), version, index)
        block_length(ds, key, file_size)  # an index beyond the end fails before any count
        last = min(index + following, ds.block_count(file_size) - 1)
        ahead = max(ds.read_ahead, next_files)
        siblings = ds.next_files(key.path, ahead) if index == 0 and ahead else []
        promotions: list = []
        with self._lock:
            block = self._table.get(key)
            if block is None:
                self._counters["misses"] += 1
                ds.misses += 1
                run = []
            else:
                run = [self._hit(ds, block, promotions)]
                for i in range(index + 1, last + 1):
                    nxt = self._table.get(key._replace(index=i))
                    if nxt is None:
                        break
                    run.append(self._hit(ds, nxt, promotions))
            files = []
            for entry in siblings[:next_files]:
                first = self._table.get(BlockKey(dataset_id, entry.path, entry.version, 0))
                if first is not None:
                    files.append((entry.path, entry.version, self._hit(ds, first, promotions)))
        self._places.start_promotions(promotions, self._prefetcher.submit)
        if ds.sequential(key.path, index) and ds.read_ahead:
            self._fetcher.schedule(ds, key, file_size, index + max(len(run), 1), ds.read_ahead,
                           limit=ds.read_ahead)
        for entry in siblings[:ds.read_ahead]:  # a folder's scan: its next files, block 0
            self._fetcher.schedule(ds, BlockKey(dataset_id, entry.path, entry.version, 0),
                           entry.size, 0, 1, limit=ds.read_ahead)
        if len(run) > 1:
            ds.sequential(key.path, index + len(run) - 1)  # the reader goes on from there
        if files:
            ds.scan_reached(files[-1][0])  # and from the last file it was handed
        self._files.note(ds, key, file_size)
        loc = run[0] if run else self._fetcher.fetch(ds, key, file_size)
        if len(run) > 1 or files:
            loc = replace(loc, following=tuple(run[1:]), next_files=tuple(files))
        return loc

    def _hit(self, ds: Dataset, block: Block, promotions: list) -> Location:
        """Count a located block as a hit (under the lock); its location."""
        self._count_hit(ds, block, promotions)
        return self._fetcher.location(block)

    def _count_hit(self, ds: Dataset, block: Block, promotions: list) -> None:
        """Under the lock: count a hit, touch the LRU, claim a promotion if one is due (for
        `Placement.start_promotions` once the lock is let go)."""
        self._table.touch(block, self._clock())
        self._counters["hits"] += 1
        self._served_bytes[block.tier] += block.length
        ds.hits += 1
        tier = self._places.promotion_target(ds, block)
        if tier is not None:
            promotions.append((block, tier))

    def prefetch(self, dataset_id: str, path: str, version: str, file_size: int,
                 first: int, count: int) -> int:
        """Load blocks [first, first+count) in the background; returns how many were queued."""
        ds = self._dataset(dataset_id)
        key = BlockKey(dataset_id, clean_path(path), version, first)
        return self._fetcher.schedule(ds, key, file_size, first, count, limit=None)

    def extent(self, dataset_id: str, path: str, version: str, file_size: int,
               wait: float = 0.0) -> str | None:
        """The tier file whose bytes [0, file_size) are this whole file version, for a reader
        that hands it to the kernel (FUSE passthrough), once its `prefetch` has loaded it if
        that ends within `wait` seconds; None unless the file has 2+ blocks, all in one extent
        the kernel may read unchecked (`scrub.ExtentChecks.trusted`).

        Every block counts as a hit. A file cached whole but not in one extent is queued for
        compaction. Its bytes never change (a scrub may only rewrite a rotten block with its
        right bytes); an unlink leaves open descriptors be.
        """
        ds = self._dataset(dataset_id)
        key = BlockKey(dataset_id, clean_path(path), version, 0)
        if not version:
            return None
        promotions: list = []
        hit = functools.partial(self._count_hit, ds, promotions=promotions)
        extent = self._extents.extent(ds, key, file_size, hit)
        if extent is None:  # an open: the file's `prefetch` may start now
            self._files.note(ds, key, file_size)
            if wait > 0 and self._files.wait_loaded(key, wait):
                extent = self._extents.extent(ds, key, file_size, hit)
        self._places.start_promotions(promotions, self._prefetcher.submit)
        return extent

    def changed(self, dataset_id: str, paths: Sequence[str], load: bool = False,
                tree: bool = False) -> None:
        """A writer-mode mount changed `paths` at the source: the node forgets them and drops
        their stale blocks; `load` caches a written file's new version (`changes`)."""
        apply_changes(self._dataset(dataset_id), paths, load, tree, self._table, self._lock,
                      self._places, self._fetcher)

    def report_corrupt(self, dataset_id: str, path: str, version: str, index: int) -> None:
        """A reader found a block whose length or checksum is wrong: drop it, count it."""
        self._dataset(dataset_id)
        self._extents.report_corrupt(BlockKey(dataset_id, clean_path(path), version, index))

    def blocks(self, dataset_id: str | None = None) -> list[CachedBlock]:
        with self._lock:
            return self._table.cached(dataset_id)

    # --- preload -----------------------------------------------------------------------------

    def preload(self, dataset_id: str, paths: tuple[str, ...] = (),
                workers: int = DEFAULT_WORKERS) -> PreloadProgress:
        """Start loading the dataset (or `paths` in it); if a job runs already, that one."""
        ds = self._dataset(dataset_id)
        source = PreloadSource(functools.partial(self.stat, dataset_id),
                               functools.partial(self.list, dataset_id),
                               functools.partial(self._preload_block, ds))
        return self._preloads.start(dataset_id, lambda: PreloadJob(
            source, dataset_id, ds.block_size, tuple(paths), workers))

    def preload_progress(self, dataset_id: str) -> PreloadProgress | None:
        """The dataset's running or latest job, or None if it never had one."""
        self._dataset(dataset_id)
        return self._preloads.progress(dataset_id)

    def cancel_preload(self, dataset_id: str) -> PreloadProgress | None:
        return self._preloads.cancel(dataset_id)

    def wait_preload(self, dataset_id: str, timeout: float | None = None) -> bool:
        """Wait for the dataset's latest preload job to end; False on timeout."""
        return self._preloads.wait(dataset_id, timeout)

    def _preload_block(self, ds: Dataset, key: BlockKey, file_size: int) -> BlockOutcome:
        """Load one block for a preload job unless it is cached or the dataset has no room."""
        length = block_length(ds, key, file_size)
        return self._room.load(key, length, ds.capacity(),
                               lambda: self._fetcher.fetch(ds, key, file_size).file is not None)

    # --- maintenance, status, shutdown ----------------------------------------------------

    def maintain(self) -> None:
        """A round of maintenance and every due scrub of a disk extent; their threads do this."""
        self._maintenance.maintain()
        while self._extents.scrub_one():
            pass

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no read-ahead, prefetch, promotion or compaction is queued or running
        (file prefetches queue loads, which queue compactions: drained in that order)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return all(part.drain(None if deadline is None else max(deadline - time.monotonic(), 0))
                   for part in (self._files, self._prefetcher, self._extents))

    def statistics(self) -> EngineStatistics:
        """A snapshot of the counters since start, and of every tier and dataset now."""
        with self._lock:
            return EngineStatistics(
                tiers=tier_statistics(self.tiers, self._table, self._served_bytes, self._health),
                datasets=dataset_statistics(self._table, set(self._datasets)),
                index_write_failures=self._index.failures,
                index_in_memory=self._index.in_memory, **self._counters, **self._files.counts(),
                **self._fetcher.counts(), **self._places.counts(), **self._extents.counts(),
                fetch_seconds=tuple(self._fetcher.fetch_seconds.cumulative()),
                fetch_seconds_sum=self._fetcher.fetch_seconds.sum)

    def status(self, wait: float | None = 0) -> list[DatasetStatus]:
        """One row per dataset on the node (open, or holding blocks). Size walks start in the
        background; `wait` seconds (None: until done) lets a caller wait for them."""
        return self._statuses.rows(self._datasets, wait)

    def dataset_status(self, dataset_id: str) -> DatasetStatus:
        """One dataset's row (its size walk starts in the background if needed)."""
        ds = self._dataset(dataset_id)
        self._statuses.scan(ds)
        return self._statuses.row(dataset_id, ds)

    def close(self) -> None:
        """Stop maintenance and background work, write LRU counters, release the state dir."""
        if self._closed:
            return
        self._closed = True
        self._preloads.close()
        self._maintenance.stop()
        self._files.close()
        self._prefetcher.close()
        self._extents.close()
        with self._lock:
            datasets = list(self._datasets.values())
            self._datasets.clear()
        for ds in datasets:
            ds.close()
        self._maintenance.flush_access()
        self._index.close()
        self._state_lock.release()

    def __enter__(self) -> CacheEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

