"""Background upkeep of the tiers: watermarks and the LRU order on disk.

Stores and hits only change the in-memory table; this is what makes a tier above its high
watermark give blocks down to its low one (the last tier evicts), and what writes the LRU
access counters to the index in batches, so the order survives a restart without a write per
hit, and what probes the tiers out of service (`health.TierHealth.probe`) to take them back.
One thread runs it, woken early when a store pushes a tier over its high watermark.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from eddy.base import log

from .health import TierHealth
from .index import BlockIndex, IndexWriteFailed
from .placement import Placement
from .table import BlockTable
from .tiers import Tier

ACCESS_FLUSH_INTERVAL = 5.0  # seconds between batched writes of LRU access counters
_log = log.get("cache_engine")


class Maintenance:
    """Owns the maintenance thread, its wake-up event and the access counters' flush time.

    The engine starts it (`start`), hands `wake` to `Placement` (a store that fills a tier
    wakes it), and stops it at close (`stop`, then `flush_access` a last time). Tests
    call `maintain` directly instead of starting the thread. It shares the engine's lock to
    read the table and asks `placement.demote_until` to make room.
    """

    def __init__(self, tiers: list[Tier], table: BlockTable, index: BlockIndex,
                 lock: threading.Condition, clock: Callable[[], float], health: TierHealth):
        self._tiers = tiers
        self._health = health
        self._table = table
        self._index = index
        self._lock = lock
        self._clock = clock
        self._places: Placement | None = None
        self._wake = threading.Event()
        self._maintain_lock = threading.Lock()
        self._last_flush = clock()
        self._closed = False
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Run a round soon (a tier went over its high watermark)."""
        self._wake.set()

    def start(self, placement: Placement, interval: float | None) -> None:
        """Use `placement` to make room; with an `interval`, run a round that often (and
        when woken) in a thread."""
        self._places = placement
        if interval is not None:
            self._thread = threading.Thread(target=self._loop, args=(interval,),
                                            name="eddy-maintenance", daemon=True)
            self._thread.start()

    def maintain(self) -> None:
        """Probe the tiers, evict datasets above their capacity (blocks pinned when it was
        lowered), demote (last tier: evict) LRU blocks of tiers above their high watermark to
        the low watermark, and write LRU access counters when due."""
        with self._maintain_lock:
            self._health.probe()
            with self._lock:
                used = self._table.dataset_used
                over = [ds for ds, cap in self._table.capacity.items()
                        if cap is not None and used.get(ds, 0) > cap]
            for ds in over:
                self._places.shrink_dataset(ds)
            for tier in self._tiers:
                with self._lock:
                    over = self._table.over_high(tier.name)
                if over:
                    self._places.demote_until(tier, int(tier.low * tier.size))
            if self._clock() - self._last_flush >= ACCESS_FLUSH_INTERVAL:
                self.flush_access()

    def flush_access(self) -> None:
        """Write the LRU access counters changed since the last flush to the index (if it
        refuses, they are lost: the order on disk is older, nothing else)."""
        with self._lock:
            dirty = self._table.take_dirty()
        try:
            self._index.update_access(dirty)
        except IndexWriteFailed:
            pass
        self._last_flush = self._clock()

    def _loop(self, interval: float) -> None:
        while not self._closed:
            self._wake.wait(interval)
            self._wake.clear()
            if self._closed:
                break
            try:
                self.maintain()
            except Exception:
                _log.exception("maintenance.failed")

    def stop(self) -> None:
        """Stop the thread (if it runs) and wait for its round to end."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
