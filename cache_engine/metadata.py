"""What the source said about a dataset's tree, kept until one metadata TTL after it was read.

Every `stat` and `list` of a remote source costs a round trip (an S3 HEAD or LIST), and
readers ask far more often than files change. Two places keep answers: the engine (per
dataset, for every volume on the node) and each mount daemon (for the kernel, without a
round trip to the engine). Both use this one class with one rule: an answer is fresh until
one TTL after the source gave it, wherever it is kept. The engine therefore answers with
what is left of its record's life (`remaining`), and a daemon keeps what it was given for
that long at most (`fresh_for` of `put_entry` / `put_listing`), so a change at the source is
seen within one TTL, never two. The kernel is told the remaining life too (`kernel_timeout`).

`ttl` None means immutable: records never expire. A `ttl` of 0 caches nothing. A fresh
listing also answers lookups of its children, including negative ones, so `ls -l` or an
import path scan costs one LIST. The clock is injected so tests can move time by hand.
The cache is bounded: the oldest records go first.
"""

from __future__ import annotations

import math
import posixpath
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .ufs.base import Entry

#: The kernel's entry/attr timeout for records that never expire (an immutable dataset).
KERNEL_TIMEOUT_CAP = 86400.0
MAX_ENTRIES = 200_000
MAX_LISTINGS = 20_000
MAX_NEGATIVE = 65536  # records of absent paths (a scan of many missing names)


@dataclass(frozen=True, slots=True)
class Cached:
    """A record and the clock reading at which it stops being fresh; entry None = absent."""

    entry: Entry | None
    expiry: float


@dataclass(frozen=True, slots=True)
class Listing:
    """A directory's children as the source listed them, fresh until `expiry`."""

    entries: list[Entry]
    by_name: dict[str, Entry]
    expiry: float


class MetadataCache:
    """Entries and directory listings by dataset-relative path, each fresh for `ttl` seconds
    after the source gave it.

    The engine keeps one per dataset (`Dataset.meta`; `CacheEngine.stat_fresh` and
    `list_fresh` fill it and answer with `remaining`); a mount daemon's `DatasetFs` keeps one
    for the kernel, filled from those answers. Thread-safe: the engine calls it from many
    threads.
    """

    def __init__(self, ttl: float | None, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = MAX_ENTRIES, max_listings: int = MAX_LISTINGS):
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Cached] = OrderedDict()
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._listings: OrderedDict[str, Listing] = OrderedDict()
        self._max_entries = max_entries
        self._max_listings = max_listings

    def _expiry(self, fresh_for: float | None) -> float:
        """When a record put now expires: one TTL from now, or sooner if the answer was read
        from the source `ttl - fresh_for` seconds ago (another cache held it meanwhile)."""
        life = math.inf if self.ttl is None else self.ttl
        if fresh_for is not None:
            life = min(life, fresh_for)
        return self.clock() + life

    def remaining(self, expiry: float) -> float:
        """Seconds a record that expires at `expiry` stays fresh (inf: never expires)."""
        return max(0.0, expiry - self.clock())

    def kernel_timeout(self, expiry: float) -> float:
        """Seconds the kernel may cache a record that expires at `expiry`."""
        return min(self.remaining(expiry), KERNEL_TIMEOUT_CAP)

    def entry(self, path: str) -> Cached | None:
        """The fresh record for `path`, from its own stat or its parent's listing; else None."""
        now = self.clock()
        with self._lock:
            cached = self._entries.get(path)
            if cached is not None and cached.expiry > now:
                return cached
            expiry = self._negative.get(path)
            if expiry is not None and expiry > now:
                return Cached(None, expiry)
            if path:
                listing = self._listings.get(posixpath.dirname(path))
                if listing is not None and listing.expiry > now:
                    return Cached(listing.by_name.get(posixpath.basename(path)), listing.expiry)
        return None

    def put_entry(self, path: str, entry: Entry | None,
                  fresh_for: float | None = None) -> Cached:
        """Remember what a stat of `path` said (None: it does not exist); `fresh_for`: the
        answer came from another cache with that many seconds of its life left."""
        cached = Cached(entry, self._expiry(fresh_for))
        with self._lock:
            if entry is None:
                self._entries.pop(path, None)
                self._put(self._negative, path, cached.expiry, MAX_NEGATIVE)
            else:
                self._negative.pop(path, None)
                self._put(self._entries, path, cached, self._max_entries)
        return cached

    def listing(self, path: str) -> Listing | None:
        with self._lock:
            listing = self._listings.get(path)
        if listing is not None and listing.expiry > self.clock():
            return listing
        return None

    def put_listing(self, path: str, entries: list[Entry],
                    fresh_for: float | None = None) -> Listing:
        """Remember a directory's children; they answer lookups until the listing expires."""
        listing = Listing(list(entries), {e.name: e for e in entries}, self._expiry(fresh_for))
        with self._lock:
            self._put(self._listings, path, listing, self._max_listings)
            for name in listing.by_name:
                child = posixpath.join(path, name) if path else name
                self._entries.pop(child, None)  # the listing is at least as new
                self._negative.pop(child, None)
        return listing

    @staticmethod
    def _put(table: OrderedDict, key: str, value, limit: int) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > limit:
            table.popitem(last=False)

    def forget(self, path: str) -> None:
        """Drop what is kept for `path` itself (the kernel no longer knows the inode)."""
        with self._lock:
            self._entries.pop(path, None)
            self._listings.pop(path, None)

    def forget_changed(self, path: str, tree: bool = False) -> None:
        """`path` was changed through this node: drop its records and its parent's listing
        (which names it); with `tree`, every record below it too (a directory moved away)."""
        below = f"{path}/" if path else ""
        with self._lock:
            for table in (self._entries, self._negative, self._listings):
                table.pop(path, None)
                if tree:
                    for key in [k for k in table if k.startswith(below)]:
                        del table[key]
            self._listings.pop(posixpath.dirname(path), None)

    def __len__(self) -> int:
        return len(self._entries) + len(self._negative) + len(self._listings)
