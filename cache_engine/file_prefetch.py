"""Whole-file prefetch (the `prefetch` volume parameter): a file loaded in offset order, with
parallel ranged reads, from its first read.

A model loader that maps a safetensors file (vLLM, transformers) faults its pages in the
order it wants its tensors, not the file's: read-ahead, which follows sequential readers,
never starts, and a cold load waits one source round trip per fault. With `prefetch:
safetensors` the first lookup (or open) of any block of a `*.safetensors` file of 2+ blocks
queues the file: its header is read through the cache and checked (`safetensors`), then
every block it names is loaded in offset order, so the loader's faults find them cached.
`prefetch: whole` does the same for every file of 2+ blocks, without a header.

Each dataset has at most one runner thread, taking its queued files in turn; it never reads
the source itself. Each block load runs on the engine's `Prefetcher` pool with a slot of the
dataset's source budget taken only when one is free beyond the foreground's reserve (as
read-ahead's, `SourceBudget.try_take`); the runner waits for such a slot rather than skip the
block, so a reader's own misses always find one and the file is still loaded whole. A file
version is queued once (`Dataset.claim_prefetch`), loads at most the dataset's capacity in
blocks (the rest would evict its own first blocks), and stops at its first failed block.

A prefetched file is cached whole while its reader is still going through it: `quiet_in`
tells `extents.Extents` to build its extent (a copy of the whole file) once the reader pauses,
not on top of the reader's last seconds.

An open may wait for the file it opens to be loaded whole (`wait_loaded`, the mount's
`prefetchWait`): then the kernel reads it from the tier itself (passthrough), a map of it
included, instead of each fault of a loader's map reaching the daemon and filling the page
cache with a second copy. At most MAX_WAITERS opens wait at once (they hold engine threads).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass

from eddy.base import log

from .blocks import BlockKey, checksum
from .dataset import Dataset
from .fetch import BlockFetcher
from .prefetch import Prefetcher
from .safetensors import LENGTH_BYTES, covers_all, header_length, span_blocks, tensor_spans
from .spec import prefetch_covers
from .types import Location

MAX_QUEUED_FILES = 64  # per dataset; a file noted beyond it is not prefetched
POLL_SECONDS = 0.05  # a runner waiting for a slot, or for a header block, looks this often
QUIET_SECONDS = 0.5  # a file this long without a lookup has no reader going through it
MAX_READ_FILES = 1024  # file versions whose last lookup is remembered (`quiet_in`)
MAX_WAITERS = 8  # opens waiting for a file's prefetch (`wait_loaded`), of all datasets
# prefetch_open_waits: opens that waited for a file's prefetch; ..._loaded: of them, those
# whose file was loaded whole in time (the others read it through the mount).
COUNTERS = ("prefetch_open_waits", "prefetch_open_waits_loaded")
_log = log.get("cache_engine.file_prefetch")


@dataclass
class _File:
    """One file version queued for prefetch."""

    ds: Dataset
    key: BlockKey  # block 0 of it
    size: int
    safetensors: bool  # load what its header names (and nothing unless it has one)
    failed: bool = False  # a block load failed: the rest is not tried
    started: float = 0.0  # time.monotonic() its runner took it
    loads: int = 0  # block loads started (under the lock, as the two below)
    loading: int = 0  # of them not ended yet
    all_started: bool = False  # the runner is done with it: its last load ending ends it
    whole: bool | None = None  # its loads cover every block (None: not known yet)

    @property
    def ended(self) -> bool:
        """Every load it started has ended (under the lock)."""
        return self.all_started and not self.loading


class FilePrefetches:
    """The engine's whole-file prefetches: which file versions to load, and the runners.

    The engine calls `note` on each block lookup and each open (cheap, never waits), and
    `drain` and `close` with its own. Runners reach blocks through `BlockFetcher` on the
    `Prefetcher` pool only, so the engine's `Prefetcher.close` waits for every load they
    started, and `close` here never waits for a source.
    """

    def __init__(self, fetcher: BlockFetcher, prefetcher: Prefetcher,
                 clock: Callable[[], float] = time.monotonic):
        self._fetcher = fetcher
        self._prefetcher = prefetcher
        self._clock = clock  # for `quiet_in`; runners wait on time.monotonic deadlines
        self._lock = threading.Condition(threading.Lock())  # notified: a load ended, a runner
        self._queues: dict[str, deque[_File]] = {}  # dataset id -> files; a runner while here
        self._read_at: OrderedDict[tuple[str, str, str], float] = OrderedDict()  # last lookup
        self._files: dict[tuple[str, str, str], _File] = {}  # file version -> its file, queued
        self._waiters = 0  # in `wait_loaded`
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._closed = False

    def note(self, ds: Dataset, key: BlockKey, file_size: int) -> None:
        """A block of this file version was asked for (or the file opened): queue the file
        if the dataset's `prefetch` covers it and it was not queued before."""
        mode = ds.spec.prefetch
        if file_size <= ds.block_size or not prefetch_covers(mode, key.path):
            return
        with self._lock:
            self._read_at[key[:3]] = self._clock()
            self._read_at.move_to_end(key[:3])
            if len(self._read_at) > MAX_READ_FILES:
                self._read_at.popitem(last=False)
        if not ds.claim_prefetch(key.path, key.version):
            return
        file = _File(ds, key._replace(index=0), file_size, mode == "safetensors")
        with self._lock:
            if self._closed:
                return
            queue = self._queues.get(ds.id)
            if queue is None:
                queue = self._queues[ds.id] = deque()
                threading.Thread(target=self._run, args=(ds.id,), daemon=True,
                                 name=f"file-prefetch-{ds.id[:8]}").start()
            if len(queue) >= MAX_QUEUED_FILES:
                _log.info("prefetch.queue_full", dataset=ds.id)
                return
            queue.append(file)
            self._files[key[:3]] = file

    def wait_loaded(self, key: BlockKey, seconds: float) -> bool:
        """Wait up to `seconds` for the prefetch of this file version to load every block of
        it: True once its last load ended, none failed, and no block of it that the prefetch
        left to another reader's load is still on its way (its extent may be asked for
        again). False at once if no prefetch of it is queued or running, if it will not load
        every block (a header that does not name them all, a file bigger than the dataset's
        capacity) or if MAX_WAITERS wait already; False when a load fails, on close or when
        the time is up."""
        started = time.monotonic()
        deadline = started + seconds
        with self._lock:
            file = self._files.get(key[:3])
            if file is None or self._waiters >= MAX_WAITERS:
                return False
            self._waiters += 1
            self._counters["prefetch_open_waits"] += 1
        loaded = False
        try:
            with self._lock:
                self._lock.wait_for(lambda: self._closed or file.failed or file.whole is False
                                    or file.ended, seconds)
                loaded = not (self._closed or file.failed) and file.whole is True and file.ended
            while loaded and self._fetcher.loading(key):  # skipped: another's load
                if self._closed or time.monotonic() > deadline:
                    loaded = False
                    break
                time.sleep(POLL_SECONDS)
        finally:
            with self._lock:
                self._waiters -= 1
                self._counters["prefetch_open_waits_loaded"] += loaded
        _log.info("prefetch.open_waited", dataset=key.dataset_id, path=key.path, loaded=loaded,
                  seconds=round(time.monotonic() - started, 3))
        return loaded

    def quiet_in(self, key: BlockKey) -> float:
        """Seconds until this file version has gone QUIET_SECONDS without a lookup (0: it
        has, or it is no file `prefetch` covers): until then a reader is going through it."""
        with self._lock:
            last = self._read_at.get(key[:3])
        return 0.0 if last is None else max(0.0, last + QUIET_SECONDS - self._clock())

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued file has had its loads started; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._queues, timeout)

    def close(self) -> None:
        """Stop the runners: they start no more loads and end within a poll; no open waits."""
        with self._lock:
            self._closed = True
            self._files.clear()
            self._lock.notify_all()

    def _run(self, dataset_id: str) -> None:
        while True:
            with self._lock:
                queue = self._queues[dataset_id]
                if self._closed or not queue:
                    del self._queues[dataset_id]
                    self._lock.notify_all()
                    return
                file = queue.popleft()
            file.started = time.monotonic()
            try:
                self._load(file)
            except Exception as e:  # noqa: BLE001 - an optimisation: readers fetch for themselves
                file.failed = True
                _log.info("prefetch.failed", dataset=dataset_id, error=str(e))
            with self._lock:
                file.all_started = True
                ended = file.ended  # its last load ended before (or none started)
                self._lock.notify_all()
            if ended:
                self._ended(file)

    def _load(self, file: _File) -> None:
        """Start the loads of the file's missing blocks, in offset order."""
        ds = file.ds
        spans = [(0, file.size)]
        if file.safetensors:
            spans = self._safetensors_spans(file)
            if spans is None:
                _log.debug("prefetch.not_safetensors", dataset=ds.id, path=file.key.path)
                return
        most = ds.capacity() // ds.block_size  # more would evict its own first blocks
        count = ds.block_count(file.size)
        with self._lock:
            file.whole = count <= most and covers_all(spans, ds.block_size, count)
            self._lock.notify_all()
        for index in itertools.islice(span_blocks(spans, ds.block_size), most):
            key = file.key._replace(index=index)
            if not self._fetcher.wanted(key):
                continue
            if not self._take_slot(file):
                return
            with self._lock:
                file.loads += 1
                file.loading += 1
            if not self._prefetcher.submit(self._load_block, file, key, owner=ds.id):
                ds.budget.give_back()  # closed
                with self._lock:
                    file.loading -= 1
                return

    def _ended(self, file: _File) -> None:
        """The file's last load ended: one line says what its prefetch did, if anything."""
        with self._lock:
            if self._files.get(file.key[:3]) is file:
                del self._files[file.key[:3]]
        if file.loads or file.failed:
            _log.info("prefetch.file", dataset=file.ds.id, path=file.key.path,
                      loads=file.loads, failed=file.failed,
                      seconds=round(time.monotonic() - file.started, 3))

    def _take_slot(self, file: _File) -> bool:
        """A slot of the dataset's budget free beyond the foreground's reserve, waited for up
        to the dataset's sourceTimeout; False then, or once closed or the file failed."""
        deadline = time.monotonic() + file.ds.spec.source_timeout
        while not (self._closed or file.failed):
            if file.ds.budget.try_take():
                return True
            if time.monotonic() > deadline:
                _log.info("prefetch.no_slot", dataset=file.ds.id)
                return False
            with self._lock:
                self._lock.wait(POLL_SECONDS)
        return False

    def _load_block(self, file: _File, key: BlockKey) -> None:
        """On the pool, holding a slot: load the block (or give the slot back)."""
        try:
            self._fetcher.load_ahead(file.ds, key, file.size, taken=True)
        except BaseException:
            file.failed = True
            raise
        finally:
            with self._lock:
                file.loading -= 1
                ended = file.all_started and not file.loading
                self._lock.notify_all()
            if ended:
                self._ended(file)

    def _safetensors_spans(self, file: _File) -> list[tuple[int, int]] | None:
        """What the file's header names (`safetensors.tensor_spans`), read through the cache;
        None if it has none."""
        n = header_length(self._read(file, 0, LENGTH_BYTES + 1), file.size)
        if n is None:
            return None
        return tensor_spans(self._read(file, LENGTH_BYTES, n), file.size)

    def _read(self, file: _File, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the file, block by block through the cache (a
        header's blocks are the file's first); b"" if one cannot be had."""
        bs = file.ds.block_size
        parts = []
        for index in range((offset // bs), (offset + length - 1) // bs + 1):
            block = self._block(file, index)
            if block is None:
                return b""
            start = max(offset - index * bs, 0)
            parts.append(block[start:offset + length - index * bs])
        return b"".join(parts)

    def _block(self, file: _File, index: int) -> bytes | None:
        """One block's bytes, fetched (single-flight with readers) on the pool; None when
        closed, or when its tier file is gone or fails its checksum."""
        key = file.key._replace(index=index)
        future: Future = Future()

        def fetch() -> None:
            try:
                future.set_result(self._fetcher.fetch(file.ds, key, file.size))
            except BaseException as e:  # noqa: BLE001 - handed to the runner
                future.set_exception(e)

        if not self._prefetcher.submit(fetch, owner=file.ds.id):
            return None
        while not wait([future], POLL_SECONDS).done:
            if self._closed:
                return None
        return _bytes(future.result())


def _bytes(loc: Location) -> bytes | None:
    """A located block's bytes: those it came with, or its tier file's if checked."""
    if loc.data is not None:
        return loc.data
    try:
        fd = os.open(loc.file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, loc.length, loc.offset)
        finally:
            os.close(fd)
    except OSError:
        return None  # evicted or moved meanwhile: no prefetch this time
    return data if len(data) == loc.length and checksum(data) == loc.checksum else None
