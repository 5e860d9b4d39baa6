"""How much of the engine one dataset's source may hold: a few operations, each for a while.

Python cannot interrupt a thread blocked in a system call (a read from an NFS server that died
under a hard mount, an HTTP server that accepts and never answers, a local file that blocks).
So every source operation of a dataset (stat, list, a block read) runs on a worker thread of
that dataset's `SourceBudget`, and the thread that asked (an engine RPC thread, a preload or
read-ahead worker) waits for it until the request's deadline. Past it the request fails with
`SourceTimeout` (ETIMEDOUT for the one read that asked: a mount answers that read with it, and
never takes it for an engine that is away), while the stuck worker keeps its slot until the
operation returns. A dataset whose source hangs therefore uses up its own `slots` and nothing
else: the engine's RPC threads wait at most a deadline, and other datasets never wait at all.

    budget = SourceBudget("3f2a...", slots=8)
    entry = budget.run(lambda: ufs.stat("a"), time.monotonic() + 20, "stat of 'a'")

Background loads (read-ahead, prefetch) take a slot only if one is free beyond a reserve kept
for foreground reads, and never wait for one (`try_take`).
"""

from __future__ import annotations

import errno
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import TypeVar

from eddy.base import log

from .ufs.base import UfsUnavailable

T = TypeVar("T")
IDLE_SECONDS = 30.0  # a worker with nothing to do this long ends
_log = log.get("cache_engine.budget")


class SourceTimeout(UfsUnavailable):
    """A source operation did not finish within the dataset's `sourceTimeout` (ETIMEDOUT)."""

    def __init__(self, message: str):
        super().__init__(errno.ETIMEDOUT, message)


def call_within(fn: Callable[[], T], seconds: float, what: str,
                discard: Callable[[T], object] | None = None) -> T:
    """`fn()` on a thread of its own, waited for `seconds`; SourceTimeout past them, and what
    it returns late is handed to `discard`. For the rare source call outside any dataset's
    budget (opening its backend), so it cannot hold the calling engine thread either."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the waiter
            future.set_exception(e)

    threading.Thread(target=run, name="source-open", daemon=True).start()
    wait([future], seconds)
    if future.done():
        return future.result()
    if discard is not None:
        future.add_done_callback(lambda f: f.exception() is None and discard(f.result()))
    _log.warning("source.timeout", what=what)
    raise SourceTimeout(f"{what} did not finish in time (sourceTimeout)")


class SourceBudget:
    """At most `slots` source operations of one dataset in flight, each waited for until a
    deadline; the workers that run them.

    A `Dataset` owns one and runs every source call through it (`Dataset.call_source`). The
    slot of an operation whose waiter gave up stays taken until the operation returns, so
    stuck operations are counted where they hang. When every slot is held by such an
    operation, a new request fails at once instead of waiting out its deadline: the source is
    known to hang, and an engine thread waiting for it helps no one.
    """

    def __init__(self, name: str, slots: int, idle_seconds: float = IDLE_SECONDS):
        self.name = name  # the dataset id, for logs and messages
        self._slots = slots
        self._idle_seconds = idle_seconds
        self._lock = threading.Condition(threading.Lock())  # notified when a slot frees
        self._in_flight = 0  # slots taken: queued or running operations, and reservations
        self._overdue = 0  # operations still running whose waiter gave up
        self._waiting = 0  # foreground requests waiting for a slot
        self._idle = 0  # workers waiting for a job, minus jobs queued for them
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.timeouts = 0  # requests that gave up at their deadline (or at once, all stuck)

    @property
    def slots(self) -> int:
        return self._slots

    @slots.setter
    def slots(self, n: int) -> None:
        with self._lock:
            self._slots = n
            self._lock.notify_all()

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {"slots": self._slots, "in_flight": self._in_flight,
                    "overdue": self._overdue, "waiting": self._waiting,
                    "timeouts": self.timeouts}

    def run(self, op: Callable[[], T], deadline: float, what: str, taken: bool = False) -> T:
        """`op()` on a worker, waited for until `deadline` (time.monotonic); SourceTimeout
        past it. `taken`: the caller already holds a slot (`try_take`), which this uses."""
        if not taken:
            self.take(deadline, what)
        future: Future = Future()
        self._submit(op, future)
        wait([future], max(deadline - time.monotonic(), 0))
        if future.done():
            return future.result()
        with self._lock:
            if not future.done():  # still running: it keeps its slot, counted as stuck
                future.overdue = True
                self._overdue += 1
                self.timeouts += 1
                stuck = self._overdue
                self._lock.notify_all()  # waiters for a slot: maybe every one is stuck now
            else:
                stuck = -1
        if stuck < 0:  # it finished just now
            return future.result()
        _log.warning("source.timeout", dataset=self.name, what=what, stuck=stuck)
        raise SourceTimeout(f"source of dataset {self.name}: {what} did not finish in time "
                            "(sourceTimeout)")

    def take(self, deadline: float, what: str) -> None:
        """Take a slot, waiting for one until `deadline`; SourceTimeout if none frees, or at
        once when every slot is held by an operation that outlived its own deadline."""
        with self._lock:
            self._waiting += 1
            try:
                while self._in_flight >= self._slots:
                    left = deadline - time.monotonic()
                    if self._overdue >= self._slots or left <= 0:
                        self.timeouts += 1
                        stuck = self._overdue
                        break
                    self._lock.wait(left)
                else:
                    self._in_flight += 1
                    return
            finally:
                self._waiting -= 1
        _log.warning("source.busy", dataset=self.name, what=what, stuck=stuck)
        raise SourceTimeout(f"source of dataset {self.name}: no room for {what}: "
                            f"{stuck} of {self._slots} operations are stuck (sourceConcurrency)"
                            if stuck >= self._slots else
                            f"source of dataset {self.name}: {what} waited its whole "
                            "sourceTimeout for one of the dataset's sourceConcurrency slots")

    def try_take(self) -> bool:
        """Take a slot for background work if one is free beyond the foreground's reserve
        (a quarter of the slots) and no foreground request waits; never waits."""
        with self._lock:
            if self._waiting or self._in_flight >= self._slots - self._slots // 4:
                return False
            self._in_flight += 1
            return True

    def give_back(self) -> None:
        """Return a slot taken with `try_take` that is not used after all."""
        with self._lock:
            self._in_flight -= 1
            self._lock.notify()

    # --- workers ---------------------------------------------------------------------------

    def _submit(self, op: Callable[[], object], future: Future) -> None:
        with self._lock:
            self._jobs.put((op, future))
            if self._idle:
                self._idle -= 1
                return
        threading.Thread(target=self._work, name=f"source-{self.name[:8]}", daemon=True).start()

    def _work(self) -> None:
        """Run jobs until idle for a while. Daemon threads: one stuck for ever in a system
        call must not keep the process from exiting."""
        while True:
            try:
                op, future = self._jobs.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # no job was queued for this worker meanwhile
                        self._idle -= 1
                        return
                continue
            self._do(op, future)
            with self._lock:
                self._idle += 1

    def _do(self, op: Callable[[], object], future: Future) -> None:
        started = time.monotonic()
        try:
            result = op()
        except BaseException as e:  # noqa: BLE001 - handed to the waiter, if one is left
            future.set_exception(e)
        else:
            future.set_result(result)
        finally:
            with self._lock:
                self._in_flight -= 1
                late = getattr(future, "overdue", False)
                if late:
                    self._overdue -= 1
                self._lock.notify()
            if late:
                _log.info("source.returned", dataset=self.name,
                          seconds=round(time.monotonic() - started, 1))
