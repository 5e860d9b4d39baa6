"""Stat and list answers of one dataset, kept for the dataset's metadata TTL.

A source is asked again once an answer is older than the TTL (None: never, the dataset is
immutable), so a file changed at the source is seen with its new version after at most one
TTL; block keys carry the version, so old bytes are never served for the new version. Time
comes from the engine's injected clock. The cache is bounded: the oldest answers go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from .ufs.base import Entry

MAX_STATS = 200_000
MAX_LISTS = 20_000


class MetadataCache:
    def __init__(self, ttl: float | None, clock: Callable[[], float],
                 max_stats: int = MAX_STATS, max_lists: int = MAX_LISTS):
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._stats: OrderedDict[str, tuple[float, Entry]] = OrderedDict()
        self._lists: OrderedDict[str, tuple[float, list[Entry]]] = OrderedDict()
        self._max_stats = max_stats
        self._max_lists = max_lists

    def _expiry(self) -> float:
        return float("inf") if self.ttl is None else self._clock() + self.ttl

    def _get(self, table: OrderedDict, path: str):
        with self._lock:
            hit = table.get(path)
            if hit is None:
                return None
            if hit[0] <= self._clock():
                del table[path]
                return None
            return hit[1]

    @staticmethod
    def _put(table: OrderedDict, key: str, value, expiry: float, limit: int) -> None:
        table[key] = (expiry, value)
        table.move_to_end(key)
        while len(table) > limit:
            table.popitem(last=False)

    def stat(self, path: str) -> Entry | None:
        return self._get(self._stats, path)

    def list(self, path: str) -> list[Entry] | None:
        return self._get(self._lists, path)

    def put_stat(self, entry: Entry) -> None:
        expiry = self._expiry()
        with self._lock:
            self._put(self._stats, entry.path, entry, expiry, self._max_stats)

    def put_list(self, path: str, entries: list[Entry]) -> None:
        """Remember a listing, and each child's stat with it."""
        expiry = self._expiry()
        with self._lock:
            self._put(self._lists, path, list(entries), expiry, self._max_lists)
            for entry in entries:
                self._put(self._stats, entry.path, entry, expiry, self._max_stats)
