"""Preload jobs: load a dataset's blocks into the cache before pods read them (Fluid's DataLoad).

A job walks the files in its scope (the whole dataset, or a list of paths: a directory, a file
or a name prefix), then loads every block that is not cached yet with a bounded number of
parallel source reads. It is resumable (cached blocks are skipped, so a job restarted after a
crash fetches only what is missing) and cancellable. It never claims success it did not reach:

    Running          listing, then loading
    Complete         every block of every file in scope is cached
    CapacityReached  the dataset's capacity (cacheCapacity, or what its tiers hold) is full;
                     `bytes_cached` says exactly how much of the scope is cached
    Cancelled        stopped on request (or by the engine shutting down)
    Failed           the source failed; `message` says how

The engine runs at most one job per dataset (`Preloads`); asking again while one runs returns
that job. A job sees its dataset only through a `PreloadSource` (stat, list, load one block),
and every load first passes the `PreloadRoom` check, so a dataset that does not fit ends
CapacityReached instead of evicting its own blocks.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eddy.base import log
from eddy.base.errors import Unavailable

from .blocks import BlockKey
from .types import JobState, PreloadProgress
from .ufs.base import Entry, Kind, clean_path, walk_files

if TYPE_CHECKING:
    from .table import BlockTable

DEFAULT_WORKERS = 8
MAX_WORKERS = 64
_log = log.get("cache_engine.preload")


class BlockOutcome(enum.Enum):
    """What loading one block for a preload did; `PreloadRoom.load` answers it to the job."""

    CACHED = "cached"  # it was already there
    LOADED = "loaded"  # fetched from the source and stored
    FULL = "full"  # no room for it: the dataset is at its capacity


@dataclass
class _File:
    entry: Entry
    blocks_left: int


@dataclass
class _Counters:
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_cached: int = 0
    bytes_fetched: int = 0
    blocks_skipped: int = 0
    listing: bool = True
    files: dict[str, _File] = field(default_factory=dict)


@dataclass(frozen=True)
class PreloadSource:
    """One dataset as a preload job sees it: its metadata and a way to load one block.

    The engine builds one per job (`CacheEngine.preload`) from its own stat, list and
    room-checked fetch; tests may build one from fakes. `load_block(key, file_size)` loads a
    block unless it is cached or the dataset has no room (see `PreloadRoom`).
    """

    stat: Callable[[str], Entry]
    list: Callable[[str], list[Entry]]
    load_block: Callable[[BlockKey, int], BlockOutcome]


class PreloadRoom:
    """The room check before each preload load: does the block fit the dataset's capacity?

    Owned by the engine, shared by all its jobs. It reads the engine's `BlockTable` under the
    engine's lock. Blocks being loaded count against the room, but only while not stored yet:
    a stored block counts in the table's `dataset_used` already, and must not count twice
    between its store and its loader's return (a busy machine would end a preload one block
    short).
    """

    def __init__(self, table: BlockTable, lock: threading.Condition):
        self._table = table
        self._lock = lock
        self._loading: dict[str, dict[BlockKey, int]] = {}  # dataset id -> loads, lengths

    def load(self, key: BlockKey, length: int, limit: int,
             fetch: Callable[[], bool]) -> BlockOutcome:
        """`fetch()` the block (True: a tier stored it) unless it is cached or the dataset's
        cached bytes, the loads in flight and it would pass `limit`."""
        with self._lock:
            if key in self._table.blocks:
                return BlockOutcome.CACHED
            loading = self._loading.setdefault(key.dataset_id, {})
            pending = sum(n for k, n in loading.items() if k not in self._table.blocks)
            if self._table.dataset_used.get(key.dataset_id, 0) + pending + length > limit:
                return BlockOutcome.FULL
            loading[key] = length
        try:
            stored = fetch()
        finally:
            with self._lock:
                loading.pop(key, None)
        return BlockOutcome.LOADED if stored else BlockOutcome.FULL


class Preloads:
    """The engine's preload jobs: at most one running per dataset, the latest kept for status.

    The engine calls `start`, `progress`, `cancel`, `wait` for its API, and `close` when it
    shuts down (every job cancelled; no new one starts).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, PreloadJob] = {}  # dataset id -> its latest job
        self._closed = False

    def start(self, dataset_id: str, make: Callable[[], PreloadJob]) -> PreloadProgress:
        """Start `make()` for the dataset; if a job runs already, that one."""
        with self._lock:
            if self._closed:
                raise Unavailable("the cache engine is shutting down")
            job = self._jobs.get(dataset_id)
            fresh = job is None or job.progress().done
            if fresh:
                job = self._jobs[dataset_id] = make()
        if fresh:
            job.start()
        return job.progress()

    def progress(self, dataset_id: str) -> PreloadProgress | None:
        job = self._jobs.get(dataset_id)
        return job.progress() if job is not None else None

    def cancel(self, dataset_id: str) -> PreloadProgress | None:
        job = self._jobs.get(dataset_id)
        if job is None:
            return None
        job.cancel()
        job.wait()
        return job.progress()

    def wait(self, dataset_id: str, timeout: float | None = None) -> bool:
        """Wait for the dataset's latest job to end; False on timeout (True if none)."""
        job = self._jobs.get(dataset_id)
        return job is None or job.wait(timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
            job.wait()


class PreloadJob:
    """One job: `start()` runs it in a thread; `progress()`, `cancel()`, `wait()` from others.

    `Preloads` makes and keeps them; the job reaches its dataset only through `source`.
    """

    def __init__(self, source: PreloadSource, dataset_id: str, block_size: int,
                 paths: tuple[str, ...], workers: int = DEFAULT_WORKERS,
                 clock: Callable[[], float] = time.time):
        self.dataset_id = dataset_id
        self.paths = tuple(clean_path(p) for p in paths)
        self._source = source
        self._block_size = block_size
        self._workers = max(1, min(workers, MAX_WORKERS))
        self._clock = clock
        self._lock = threading.Lock()
        self._c = _Counters()
        self._state = JobState.RUNNING
        self._message = ""
        self._stop = threading.Event()
        self._started = clock()
        self._finished: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"preload-{dataset_id[:8]}",
                                        daemon=True)

    # --- control ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._end(JobState.CANCELLED, "cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def progress(self) -> PreloadProgress:
        with self._lock:
            c = self._c
            return PreloadProgress(
                self.dataset_id, self.paths, self._state, c.listing, c.files_total,
                c.files_done, c.bytes_total, c.bytes_cached, c.bytes_fetched, c.blocks_skipped,
                self._started, self._finished, self._message)

    def _end(self, state: JobState, message: str = "") -> None:
        """Record how the job ends; the first ending wins."""
        with self._lock:
            if self._state is JobState.RUNNING:
                self._state, self._message = state, message
        self._stop.set()

    # --- the job ------------------------------------------------------------------------------

    def _run(self) -> None:
        _log.info("preload.start", dataset=self.dataset_id, paths=list(self.paths),
                  workers=self._workers)
        try:
            with ThreadPoolExecutor(self._workers, thread_name_prefix="preload") as pool:
                slots = threading.BoundedSemaphore(self._workers * 2)
                for entry in self._files():
                    self._add_file(entry)
                    for index in range(-(-entry.size // self._block_size)):
                        if not self._acquire(slots):
                            break
                        pool.submit(self._load, entry, index, slots)
                    if self._stop.is_set():
                        break
                with self._lock:
                    self._c.listing = False
        except Exception as e:  # noqa: BLE001 - the job's state must say what went wrong
            _log.warning("preload.failed", dataset=self.dataset_id, error=str(e))
            self._end(JobState.FAILED, str(e) or type(e).__name__)
        self._end(JobState.COMPLETE)
        with self._lock:
            self._c.listing = False
            self._finished = self._clock()
        p = self.progress()
        _log.info("preload.end", dataset=self.dataset_id, state=p.state.value,
                  bytes_cached=p.bytes_cached, bytes_total=p.bytes_total,
                  bytes_fetched=p.bytes_fetched, message=p.message)

    def _acquire(self, slots: threading.BoundedSemaphore) -> bool:
        while not slots.acquire(timeout=0.2):
            if self._stop.is_set():
                return False
        if self._stop.is_set():
            slots.release()
            return False
        return True

    def _add_file(self, entry: Entry) -> None:
        blocks = -(-entry.size // self._block_size)
        with self._lock:
            c = self._c
            c.files_total += 1
            c.bytes_total += entry.size
            if blocks == 0:
                c.files_done += 1
            else:
                c.files[entry.path] = _File(entry, blocks)

    def _load(self, entry: Entry, index: int, slots: threading.BoundedSemaphore) -> None:
        try:
            if self._stop.is_set():
                return
            length = min(self._block_size, entry.size - index * self._block_size)
            key = BlockKey(self.dataset_id, entry.path, entry.version, index)
            outcome = self._source.load_block(key, entry.size)
            if outcome is BlockOutcome.FULL:
                self._end(JobState.CAPACITY_REACHED, "the dataset's cache capacity is full")
                return
            with self._lock:
                c = self._c
                c.bytes_cached += length
                if outcome is BlockOutcome.CACHED:
                    c.blocks_skipped += 1
                else:
                    c.bytes_fetched += length
                f = c.files[entry.path]
                f.blocks_left -= 1
                if f.blocks_left == 0:
                    c.files_done += 1
                    del c.files[entry.path]
        except Exception as e:  # noqa: BLE001 - recorded as the job's failure
            self._end(JobState.FAILED, f"{entry.path}: {e}")
        finally:
            slots.release()

    def _files(self) -> Iterator[Entry]:
        """Every regular file in scope, each once, in a stable order."""
        seen: set[str] = set()
        for path in self.paths or ("",):
            for entry in self._scope(path):
                if entry.path not in seen:
                    seen.add(entry.path)
                    yield entry
                if self._stop.is_set():
                    return

    def _scope(self, path: str) -> Iterator[Entry]:
        try:
            entry = self._source.stat(path)
        except FileNotFoundError:
            yield from self._prefixed(path)
            return
        if entry.kind is Kind.FILE:
            yield entry
        elif entry.kind is Kind.DIR:
            yield from self._walk(entry.path)

    def _prefixed(self, prefix: str) -> Iterator[Entry]:
        """Entries of the parent directory whose path starts with `prefix` ("train/part-")."""
        parent = prefix.rpartition("/")[0]
        try:
            entries = self._source.list(parent)
        except FileNotFoundError:
            raise FileNotFoundError(f"preload path {prefix!r} matches nothing") from None
        matched = [e for e in entries if e.path.startswith(prefix)]
        if not matched:
            raise FileNotFoundError(f"preload path {prefix!r} matches nothing")
        for e in matched:
            if e.kind is Kind.FILE:
                yield e
            elif e.kind is Kind.DIR:
                yield from self._walk(e.path)

    def _walk(self, top: str) -> Iterator[Entry]:
        return walk_files(self._source.list, top, self._stop.is_set)
