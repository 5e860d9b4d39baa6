"""The node's cache engine: where each block of each open dataset lives, fetching on a miss.

One `CacheEngine` per node serves every volume; a gRPC servicer (`service.py`) wraps it for the
mount daemons, and `eddy mount` uses it in-process. A hit is answered from memory with the
block's file (the caller preads it: no data is copied); a miss reads the block from the source
once however many threads ask (single-flight), writes it into the fastest allowed tier and
records it in the index. No lock is held across source I/O or file copies; space is reserved
before a write, so tier sizes and dataset capacities hold as hard limits. When no tier can take
a block the bytes are returned inline and the failure is counted: a full cache never fails a
read. Placement, demotion, promotion and eviction live in `placement.Placement`.

    engine = CacheEngine([parse_tier("MEM:/dev/shm/eddy:4Gi")], "/var/lib/eddy")
    info = engine.open_dataset(parse_parameters({"source": "local:///data"}), {})
    entry = engine.stat(info.dataset_id, "train/part-0")
    loc = engine.locate(info.dataset_id, entry.path, entry.version, 0, entry.size)
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace

from eddy import log
from eddy.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

from . import ufs as ufsmod
from .blocks import DIR_MODE, Block, BlockKey, block_path, checksum
from .dataset import Dataset, dataset_id
from .index import BlockIndex
from .placement import Placement
from .prefetch import Prefetcher
from .preload import DEFAULT_WORKERS, BlockOutcome, PreloadJob, PreloadProgress
from .recovery import node_key, reconcile
from .spec import DatasetSpec
from .status import DatasetStatus, Histogram, SizeScan, phase_of
from .table import BlockTable
from .tiers import Tier, check_tiers, in_memory
from .types import CachedBlock, DatasetInfo, Location, StateDirBusy
from .ufs.base import Entry, UfsBackend, VersionChanged, clean_path

ACCESS_FLUSH_INTERVAL = 5.0  # seconds between batched writes of LRU access counters
# A block handed out this recently is not evicted or demoted, so the reader that asked can
# still open its file: a cache too small for its concurrent readers serves uncached instead.
PIN_SECONDS = 1.0
# Seconds to read one block from a source: local disk, a LAN object store, a far region.
FETCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_log = log.get("cache_engine")


class CacheEngine:
    def __init__(self, tiers: list[Tier], state_dir: str,
                 open_ufs: Callable[[DatasetSpec, dict], UfsBackend] = ufsmod.open_ufs,
                 clock: Callable[[], float] = time.monotonic, prefetch_workers: int = 8,
                 maintenance: bool = True, maintenance_interval: float = 1.0,
                 pin_seconds: float = PIN_SECONDS,
                 held_in_ram: Callable[[str], bool] = in_memory):
        check_tiers(tiers)
        self.tiers = list(tiers)
        self._tier = {t.name: t for t in self.tiers}
        self._open_ufs = open_ufs
        self._clock = clock
        os.makedirs(state_dir, 0o700, exist_ok=True)
        self._lock_fd = _lock_state_dir(state_dir)
        try:
            _prepare_tiers(self.tiers)
            self._node_key = node_key(state_dir)
            self._index = BlockIndex(os.path.join(state_dir, "index.db"))
        except BaseException:
            os.close(self._lock_fd)
            raise
        recovered = reconcile(self._index, self.tiers)
        self._lock = threading.Condition(threading.Lock())  # notified when a claim ends
        self._table = BlockTable(self.tiers)
        self._datasets: dict[str, Dataset] = {}
        self._inflight: dict[BlockKey, Future] = {}
        self._queued: set[BlockKey] = set()  # handed to the prefetcher, not started yet
        self._jobs: dict[str, PreloadJob] = {}  # dataset id -> its latest preload job
        # dataset id -> the blocks preload is loading now, and their lengths
        self._preloading: dict[str, dict[BlockKey, int]] = {}
        self._scans: dict[str, SizeScan] = {}  # dataset id -> its latest size walk
        self._counters = dict.fromkeys(
            ("hits", "misses", "source_reads", "source_bytes", "uncached_reads",
             "tier_write_failures", "evictions", "demotions", "promotions",
             "checksum_failures", "prefetches", "extents_built", "extents_served"), 0)
        self.fetch_seconds = Histogram(FETCH_BUCKETS)  # source reads of whole blocks
        self.served_bytes = {t.name: 0 for t in self.tiers}  # block bytes located in each tier
        for block in recovered.blocks:
            if block.tier in self._tier:
                self._table.add(block)
        for (tier, file), n in recovered.held.items():
            self._table.hold_file(tier, file, n)
        self._wake = threading.Event()
        self._places = Placement(self.tiers, self._table, self._index, self._lock,
                                 self._counters, self._datasets, self._wake.set, clock,
                                 pin_seconds)
        self._prefetcher = Prefetcher(prefetch_workers)
        self._compactor = Prefetcher(1)  # one extent built at a time, in the background
        self._compacting: set[tuple[str, str, str]] = set()  # file versions queued or in it
        # Only tiers held in RAM get extents: the kernel reads an extent unchecked, and in RAM
        # nothing rots on a medium, and a power loss empties the tier rather than tearing a
        # file. A disk tier keeps every read checked, block by block.
        self._in_memory = {t.name for t in self.tiers if held_in_ram(t.path)}
        self._maintain_lock = threading.Lock()
        self._last_flush = clock()
        self._closed = False
        _log.info("engine.start", tiers=[t.name for t in self.tiers],
                  blocks=len(recovered.blocks), tmp_removed=recovered.tmp_removed,
                  orphans_removed=recovered.orphans_removed, rows_dropped=recovered.rows_dropped)
        for tier in self.tiers:  # a tier may have shrunk since the last run
            self._places.demote_until(tier, tier.size)
        self._thread = None
        if maintenance:
            self._thread = threading.Thread(target=self._maintenance_loop,
                                            args=(maintenance_interval,),
                                            name="eddy-maintenance", daemon=True)
            self._thread.start()

    # --- datasets and metadata -------------------------------------------------------------

    def open_dataset(self, spec: DatasetSpec, secrets: dict, volume_id: str = "") -> DatasetInfo:
        """Register a dataset (idempotent); the newest spec's settings and secrets win.

        `volume_id` names a volume that reads it (for status); several volumes may share one."""
        if self._closed:
            raise Unavailable("the cache engine is shutting down")
        unknown = [name for name in spec.tiers if name not in self._tier]
        if unknown:
            raise InvalidArgument(
                f"parameter 'tiers': tier {unknown[0]!r} is not configured on this node "
                f"(node tiers: {', '.join(self._tier) or 'none'})")
        allowed = [t for t in self.tiers if not spec.tiers or t.name in spec.tiers]
        ds_id = dataset_id(spec, secrets, self._node_key)
        backend = self._open_ufs(spec, secrets)
        with self._lock:
            ds = self._datasets.get(ds_id)
            known = ds is not None
            if not known:
                ds = self._datasets[ds_id] = Dataset(ds_id, spec, allowed, backend, self._clock)
            self._table.capacity[ds_id] = spec.cache_capacity
        if known:
            ds.update(spec, allowed, backend)
        if volume_id:
            ds.volumes.add(volume_id)
        self._places.shrink_dataset(ds_id)
        _log.info("dataset.open", dataset=ds_id, source=spec.source.uri,
                  tiers=[t.name for t in allowed], capacity=spec.cache_capacity)
        return DatasetInfo(ds_id, spec.block_size, spec.metadata_ttl, spec.read_ahead)

    def _dataset(self, dataset_id: str) -> Dataset:
        ds = self._datasets.get(dataset_id)
        if ds is None:
            raise NotFound(f"dataset {dataset_id} is not open on this node")
        return ds

    def stat(self, dataset_id: str, path: str) -> Entry:
        ds = self._dataset(dataset_id)
        path = clean_path(path)
        entry = ds.meta.stat(path)
        if entry is None:
            with ds.source() as ufs:
                entry = ufs.stat(path)
            ds.meta.put_stat(entry)
        return entry

    def list(self, dataset_id: str, path: str) -> list[Entry]:
        ds = self._dataset(dataset_id)
        path = clean_path(path)
        entries = ds.meta.list(path)
        if entries is None:
            with ds.source() as ufs:
                entries = ufs.list(path)
            ds.meta.put_list(path, entries)
        return list(entries)

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
        _block_length(ds, key, file_size)  # an index beyond the end fails before any count
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
        for hit, tier in promotions:
            if not self._prefetcher.submit(self._places.promote, hit, tier):
                self._places.cancel_promotion(hit, tier)
        if ds.sequential(key.path, index) and ds.read_ahead:
            self._schedule(ds, key, file_size, index + max(len(run), 1), ds.read_ahead,
                           limit=ds.read_ahead)
        for entry in siblings[:ds.read_ahead]:  # a folder's scan: its next files, block 0
            self._schedule(ds, BlockKey(dataset_id, entry.path, entry.version, 0),
                           entry.size, 0, 1, limit=ds.read_ahead)
        if len(run) > 1:
            ds.sequential(key.path, index + len(run) - 1)  # the reader goes on from there
        if files:
            ds.scan_reached(files[-1][0])  # and from the last file it was handed
        loc = run[0] if run else self._fetch(ds, key, file_size)
        if len(run) > 1 or files:
            loc = replace(loc, following=tuple(run[1:]), next_files=tuple(files))
        return loc

    def _hit(self, ds: Dataset, block: Block, promotions: list) -> Location:
        """Count a located block as a hit (under the lock); its location."""
        self._count_hit(ds, block, promotions)
        return self._location(block)

    def _count_hit(self, ds: Dataset, block: Block, promotions: list) -> None:
        self._table.touch(block, self._clock())
        self._counters["hits"] += 1
        self.served_bytes[block.tier] += block.length
        ds.hits += 1
        tier = self._places.promotion_target(ds, block)
        if tier is not None:
            promotions.append((block, tier))

    def prefetch(self, dataset_id: str, path: str, version: str, file_size: int,
                 first: int, count: int) -> int:
        """Load blocks [first, first+count) in the background; returns how many were queued."""
        ds = self._dataset(dataset_id)
        key = BlockKey(dataset_id, clean_path(path), version, first)
        return self._schedule(ds, key, file_size, first, count, limit=None)

    def _schedule(self, ds: Dataset, key: BlockKey, file_size: int, first: int, count: int,
                  limit: int | None) -> int:
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
            if not self._prefetcher.submit(self._prefetch_one, ds, k, file_size,
                                           owner=ds.id, limit=limit):
                with self._lock:
                    self._queued.difference_update(todo[queued:])
                break
            queued += 1
        return queued

    def _prefetch_one(self, ds: Dataset, key: BlockKey, file_size: int) -> None:
        with self._lock:
            self._queued.discard(key)
            if key in self._table.blocks:
                return
            self._counters["prefetches"] += 1
        self._fetch(ds, key, file_size)

    def _location(self, block: Block) -> Location:
        return Location(block_path(self._tier[block.tier], block.file), block.offset,
                        block.length, block.checksum)

    def _fetch(self, ds: Dataset, key: BlockKey, file_size: int) -> Location:
        """Single-flight: the first thread loads the block, the others wait for its answer."""
        with self._lock:
            block = self._table.get(key)
            if block is not None:  # stored while this thread was on its way here
                self._table.touch(block, self._clock())
                return self._location(block)
            future = self._inflight.get(key)
            leader = future is None
            if leader:
                future = self._inflight[key] = Future()
        if not leader:
            return future.result()
        try:
            loc = self._load(ds, key, file_size)
        except BaseException as e:
            future.set_exception(e)
            raise
        else:
            future.set_result(loc)
            return loc
        finally:
            with self._lock:
                del self._inflight[key]

    def _load(self, ds: Dataset, key: BlockKey, file_size: int) -> Location:
        length = _block_length(ds, key, file_size)
        start = time.monotonic()
        with ds.source() as ufs:
            data = ufs.read(key.path, key.index * ds.block_size, length, key.version or None)
        with self._lock:
            self.fetch_seconds.observe(time.monotonic() - start)
            self._counters["source_reads"] += 1
            self._counters["source_bytes"] += len(data)
        if len(data) != length:
            raise VersionChanged(
                errno.ESTALE, f"the source returned {len(data)} bytes for block {key.index}"
                f" where {length} were expected: the file changed", key.path)
        block = self._places.store(ds, key, data, checksum(data))
        if block is None:
            return Location(data=data)
        self._compact_when_whole(ds, key, file_size)
        return replace(self._location(block), data=data)

    # --- extents: whole files for the kernel --------------------------------------------------

    def extent(self, dataset_id: str, path: str, version: str, file_size: int) -> str | None:
        """The tier file whose bytes [0, file_size) are this whole file version, for a reader
        that hands it to the kernel (FUSE passthrough); None unless the file has 2+ blocks,
        all in one extent in a tier held in RAM (checked block by block as it was built).

        Every block counts as a hit. A file cached whole but not yet in one extent is queued
        for compaction, so a later open may get one. The file is never written again; the
        engine may unlink it later, which leaves an open descriptor reading the same bytes.
        """
        ds = self._dataset(dataset_id)
        key = BlockKey(dataset_id, clean_path(path), version, 0)
        count = ds.block_count(file_size)
        if not version or count < 2:
            return None
        promotions: list = []
        with self._lock:
            blocks = self._blocks_of(key, count)
            if blocks is None:
                return None
            whole = _in_one_extent(ds, blocks)
            if not whole or blocks[0].tier not in self._in_memory:
                extent = None
            else:
                for block in blocks:
                    self._count_hit(ds, block, promotions)
                self._counters["extents_served"] += 1
                extent = block_path(self._tier[blocks[0].tier], blocks[0].file)
        if not whole:
            self._compact_when_whole(ds, key, file_size)
        for hit, tier in promotions:
            if not self._prefetcher.submit(self._places.promote, hit, tier):
                self._places.cancel_promotion(hit, tier)
        return extent

    def _blocks_of(self, key: BlockKey, count: int) -> list[Block] | None:
        """Under the lock: blocks 0..count-1 of `key`'s file version, or None if one is not
        cached."""
        blocks = [self._table.get(key._replace(index=i)) for i in range(count)]
        return None if None in blocks else blocks

    def _compact_when_whole(self, ds: Dataset, key: BlockKey, file_size: int) -> None:
        """Queue the compaction of a file version of 2+ blocks once all of them are cached
        (it happens if they all sit in one tier held in RAM)."""
        count = ds.block_count(file_size)
        if count < 2:
            return  # every miss of a small file comes here: no lock for it
        version = key[:3]
        with self._lock:
            if version in self._compacting or self._table.file_blocks(*version) < count:
                return
            self._compacting.add(version)
        if not self._compactor.submit(self._compact, ds, key._replace(index=0), count):
            with self._lock:
                self._compacting.discard(version)

    def _compact(self, ds: Dataset, key: BlockKey, count: int) -> None:
        try:
            with self._lock:
                blocks = self._blocks_of(key, count)
            if (blocks is None or blocks[0].tier not in self._in_memory
                    or _in_one_extent(ds, blocks)):
                return
            if self._places.compact(blocks) is not None:
                _log.info("extent.built", dataset=ds.id, path=key.path, blocks=count,
                          tier=blocks[0].tier)
        finally:
            with self._lock:
                self._compacting.discard(key[:3])

    # --- preload -----------------------------------------------------------------------------

    def capacity(self, dataset_id: str) -> int:
        """Bytes the dataset can keep cached at rest: its `cacheCapacity`, bounded by what its
        tiers hold without maintenance pushing blocks out (low watermark above the last tier,
        high watermark in the last)."""
        ds = self._dataset(dataset_id)
        tiers = ds.tiers
        held = sum(int(t.size * t.low) for t in tiers[:-1]) + int(tiers[-1].size * tiers[-1].high)
        cap = self._table.capacity.get(dataset_id)
        return held if cap is None else min(cap, held)

    def preload(self, dataset_id: str, paths: tuple[str, ...] = (),
                workers: int = DEFAULT_WORKERS) -> PreloadProgress:
        """Start loading the dataset (or `paths` in it); if a job runs already, that one."""
        ds = self._dataset(dataset_id)
        with self._lock:
            if self._closed:
                raise Unavailable("the cache engine is shutting down")
            job = self._jobs.get(dataset_id)
            fresh = job is None or job.progress().done
            if fresh:
                job = self._jobs[dataset_id] = PreloadJob(self, dataset_id, ds.block_size,
                                                          tuple(paths), workers)
        if fresh:
            job.start()
        return job.progress()

    def preload_progress(self, dataset_id: str) -> PreloadProgress | None:
        """The dataset's running or latest job, or None if it never had one."""
        self._dataset(dataset_id)
        job = self._jobs.get(dataset_id)
        return job.progress() if job is not None else None

    def cancel_preload(self, dataset_id: str) -> PreloadProgress | None:
        job = self._jobs.get(dataset_id)
        if job is None:
            return None
        job.cancel()
        job.wait()
        return job.progress()

    def preload_block(self, dataset_id: str, key: BlockKey, file_size: int) -> BlockOutcome:
        """Load one block for a preload job unless it is cached or the dataset has no room."""
        ds = self._dataset(dataset_id)
        length = _block_length(ds, key, file_size)
        limit = self.capacity(dataset_id)
        with self._lock:
            if key in self._table.blocks:
                return BlockOutcome.CACHED
            loading = self._preloading.setdefault(dataset_id, {})
            # A block stored already counts in dataset_used: not twice (its loader may not
            # have returned yet).
            pending = sum(n for k, n in loading.items() if k not in self._table.blocks)
            if self._table.dataset_used.get(dataset_id, 0) + pending + length > limit:
                return BlockOutcome.FULL
            loading[key] = length
        try:
            loc = self._fetch(ds, key, file_size)
        finally:
            with self._lock:
                loading.pop(key, None)
        return BlockOutcome.LOADED if loc.file is not None else BlockOutcome.FULL

    def report_corrupt(self, dataset_id: str, path: str, version: str, index: int) -> None:
        """A reader found a block whose length or checksum is wrong: drop it, count it."""
        self._dataset(dataset_id)
        key = BlockKey(dataset_id, clean_path(path), version, index)
        self._places.drop_corrupt(key)

    # --- maintenance, status, shutdown ----------------------------------------------------

    def maintain(self) -> None:
        """Demote (last tier: evict) LRU blocks of tiers above their high watermark to the low
        watermark, and write LRU access counters when due. The maintenance thread runs this."""
        with self._maintain_lock:
            for tier in self.tiers:
                with self._lock:
                    over = self._table.tier_used[tier.name] > tier.high * tier.size
                if over:
                    self._places.demote_until(tier, int(tier.low * tier.size))
            if self._clock() - self._last_flush >= ACCESS_FLUSH_INTERVAL:
                self._flush_access()

    def _flush_access(self) -> None:
        with self._lock:
            dirty = self._table.take_dirty()
        self._index.update_access(dirty)
        self._last_flush = self._clock()

    def _maintenance_loop(self, interval: float) -> None:
        while not self._closed:
            self._wake.wait(interval)
            self._wake.clear()
            if self._closed:
                break
            try:
                self.maintain()
            except Exception:
                _log.exception("maintenance.failed")

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no read-ahead, prefetch, promotion or compaction is queued or running."""
        # Background loads queue compactions, never the reverse.
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._prefetcher.drain(timeout):
            return False
        return self._compactor.drain(None if deadline is None
                                     else max(deadline - time.monotonic(), 0))

    def blocks(self, dataset_id: str | None = None) -> list[CachedBlock]:
        with self._lock:
            found = (self._table.blocks.values() if dataset_id is None
                     else self._table.dataset_blocks(dataset_id).values())
            return [CachedBlock(b.key, b.tier, block_path(self._tier[b.tier], b.file),
                                b.length, b.checksum, b.offset) for b in found]

    def statistics(self) -> dict:
        t = self._table
        with self._lock:
            tiers = {tier.name: {"used": t.tier_used[tier.name], "size": tier.size,
                                 "blocks": len(t.tier_blocks(tier.name)),
                                 "reserved": t.tier_reserved[tier.name]}
                     for tier in self.tiers}
            ids = set(self._datasets) | {k for k, v in t.dataset_used.items() if v}
            datasets = {ds: {"used": t.dataset_used.get(ds, 0),
                             "capacity": t.capacity.get(ds),
                             "blocks": len(t.dataset_blocks(ds)),
                             "open": ds in self._datasets} for ds in sorted(ids)}
            return {"tiers": tiers, "datasets": datasets, **self._counters}

    def status(self, wait: float | None = 0) -> list[DatasetStatus]:
        """One row per dataset on the node (open, or holding blocks). Size walks start in the
        background; `wait` seconds (None: until done) lets a caller wait for them."""
        scans = [self._scan(ds) for ds in list(self._datasets.values())]
        if wait != 0:
            for scan in scans:
                scan.wait(wait)
        with self._lock:
            ids = sorted(set(self._datasets) | {k for k, v in self._table.dataset_used.items()
                                                if v})
        return [self._status_of(ds_id) for ds_id in ids]

    def dataset_status(self, dataset_id: str) -> DatasetStatus:
        """One dataset's row (its size walk starts in the background if needed)."""
        self._scan(self._dataset(dataset_id))
        return self._status_of(dataset_id)

    def _scan(self, ds: Dataset) -> SizeScan:
        with self._lock:
            scan = self._scans.get(ds.id)
            if scan is None or scan.stale(ds.meta.ttl):
                scan = self._scans[ds.id] = SizeScan(
                    lambda path, ds_id=ds.id: self.list(ds_id, path))
                scan.start()
            return scan

    def _status_of(self, dataset_id: str) -> DatasetStatus:
        ds = self._datasets.get(dataset_id)  # None: blocks from before a restart, not reopened
        scan = self._scans.get(dataset_id)
        files = scan.files if scan is not None else None
        tier_bytes = {t.name: 0 for t in self.tiers}
        with self._lock:
            for block in self._table.dataset_blocks(dataset_id).values():
                if files is None or (block.key.path, block.key.version) in files:
                    tier_bytes[block.tier] += block.length
            hits, misses = (ds.hits, ds.misses) if ds is not None else (0, 0)
        job = self._jobs.get(dataset_id)
        preload = job.progress() if job is not None else None
        source_error = ds.source_error if ds is not None else ""
        return DatasetStatus(
            dataset_id=dataset_id, source=ds.spec.source.uri if ds is not None else "",
            volumes=tuple(sorted(ds.volumes)) if ds is not None else (),
            ufs_total_bytes=scan.total if scan is not None else None,
            ufs_files=len(files) if files is not None else None,
            cached_bytes=sum(tier_bytes.values()),
            capacity=self.capacity(dataset_id) if ds is not None else None,
            phase=phase_of(source_error, preload, files is not None),
            hits=hits, misses=misses, tier_bytes=tier_bytes, preload=preload,
            message=source_error or (scan.error if scan is not None else ""))

    def close(self) -> None:
        """Stop maintenance and background loads, write LRU counters, release the state dir."""
        if self._closed:
            return
        self._closed = True
        for job in list(self._jobs.values()):
            job.cancel()
            job.wait()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._prefetcher.close()
        self._compactor.close()
        with self._lock:
            datasets = list(self._datasets.values())
            self._datasets.clear()
        for ds in datasets:
            ds.close()
        self._flush_access()
        self._index.close()
        os.close(self._lock_fd)

    def __enter__(self) -> CacheEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _in_one_extent(ds: Dataset, blocks: list[Block]) -> bool:
    """Whether a file's blocks (index 0 up) sit in one tier file, each at its own offset."""
    first = blocks[0]
    return all(b.tier == first.tier and b.file == first.file and b.offset == i * ds.block_size
               for i, b in enumerate(blocks))


def _block_length(ds: Dataset, key: BlockKey, file_size: int) -> int:
    start = key.index * ds.block_size
    if key.index < 0 or start >= file_size:
        raise InvalidArgument(
            f"block {key.index} is beyond the end of {key.path!r} ({file_size} bytes)")
    return min(ds.block_size, file_size - start)


def _prepare_tiers(tiers: list[Tier]) -> None:
    for tier in tiers:
        try:
            os.makedirs(tier.blocks_dir, DIR_MODE, exist_ok=True)
            os.makedirs(tier.tmp_dir, DIR_MODE, exist_ok=True)
        except OSError as e:
            raise FailedPrecondition(
                f"tier {tier.name}: cannot use {tier.path}: {e.strerror}") from None


def _lock_state_dir(state_dir: str) -> int:
    """One engine per state directory: a second one would reconcile under the first's feet."""
    fd = os.open(os.path.join(state_dir, "engine.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirBusy(f"another cache engine is using {state_dir}") from None
    return fd
