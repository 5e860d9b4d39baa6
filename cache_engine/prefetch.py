"""Background work of the engine: read-ahead and prefetch loads, promotions.

A bounded pool (`workers` threads node-wide) runs the jobs; each job may name an owner (a
dataset) with a limit on how many of its jobs may be queued or running at once, so one
sequential reader cannot flood the queue. A job's failure is logged and dropped: read-ahead is
an optimisation, the reader's own request will fetch the block again.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from eddy.base import log

_log = log.get("cache_engine.prefetch")


class Prefetcher:
    """A bounded pool of background jobs, with a per-owner limit and a way to wait for idle.

    The engine's `fetch.BlockFetcher` queues read-ahead and prefetch loads on it, `Placement`
    promotions, and `extents.Extents` its compactions (a pool of its own, one thread).
    """

    def __init__(self, workers: int):
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="eddy-prefetch")
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._per_owner: Counter[str] = Counter()
        self._pending = 0
        self._closed = False

    def in_flight(self, owner: str) -> int:
        with self._lock:
            return self._per_owner[owner]

    def submit(self, fn: Callable[..., object], *args, owner: str = "",
               limit: int | None = None) -> bool:
        """Queue `fn(*args)`; False when closed or `owner` already has `limit` jobs."""
        with self._lock:
            if self._closed or (limit is not None and self._per_owner[owner] >= limit):
                return False
            self._per_owner[owner] += 1
            self._pending += 1
        try:
            self._pool.submit(self._run, owner, fn, args)
        except RuntimeError:  # shut down meanwhile
            self._done(owner)
            return False
        return True

    def _run(self, owner: str, fn: Callable[..., object], args: tuple) -> None:
        try:
            fn(*args)
        except Exception as e:
            _log.debug("prefetch.failed", dataset=owner, error=str(e))
        finally:
            self._done(owner)

    def _done(self, owner: str) -> None:
        with self._lock:
            self._per_owner[owner] -= 1
            if not self._per_owner[owner]:
                del self._per_owner[owner]
            self._pending -= 1
            if not self._pending:
                self._idle.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no job is queued or running; False on timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0 or self._closed, timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
