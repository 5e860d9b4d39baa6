"""What the mount daemon remembers about the source's tree, for the dataset's metadata TTL.

Every `stat` and `list` of a remote source costs a round trip (an S3 HEAD or LIST), and the
kernel asks for attributes far more often than files change. Entries and listings are kept for
`metadataTTL` seconds (forever for an `immutable` dataset); a fresh listing also answers
lookups of its children, including negative ones, so `ls -l` or an import path scan costs one
LIST. The kernel is told to cache for the *remaining* life of the record it was given, so a
change at the source shows within one TTL, never two.

The clock is injected (`time.monotonic` by default) so tests can move time by hand.
"""

from __future__ import annotations

import math
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass

from cache_engine.ufs.base import Entry

#: The kernel's entry/attr timeout for records that never expire (an immutable dataset).
KERNEL_TIMEOUT_CAP = 86400.0
#: Negative records kept at most; the oldest go first (a scan of many missing names).
MAX_NEGATIVE = 65536


@dataclass(frozen=True, slots=True)
class Cached:
    """A record and the clock reading at which it stops being fresh; entry None = absent."""

    entry: Entry | None
    expiry: float


@dataclass(frozen=True, slots=True)
class Listing:
    """One directory's entries, in listing order and by name, and when they stop being fresh."""

    entries: list[Entry]
    by_name: dict[str, Entry]
    expiry: float


class MetadataCache:
    """Entries and directory listings by dataset-relative path, each fresh for `ttl` seconds.

    `ttl` None means immutable: records never expire. A `ttl` of 0 caches nothing.
    """

    def __init__(self, ttl: float | None, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[str, Cached] = {}
        self._negative: dict[str, float] = {}
        self._listings: dict[str, Listing] = {}

    def _expiry(self) -> float:
        return math.inf if self.ttl is None else self.clock() + self.ttl

    def remaining(self, expiry: float) -> float:
        """Seconds the kernel may cache a record that expires at `expiry`."""
        return max(0.0, min(expiry - self.clock(), KERNEL_TIMEOUT_CAP))

    def entry(self, path: str) -> Cached | None:
        """The fresh record for `path`, from its own stat or its parent's listing; else None."""
        now = self.clock()
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

    def put_entry(self, path: str, entry: Entry | None) -> Cached:
        """Remember what a stat of `path` said (None: it does not exist)."""
        cached = Cached(entry, self._expiry())
        if entry is None:
            self._entries.pop(path, None)
            self._negative.pop(path, None)
            self._negative[path] = cached.expiry
            while len(self._negative) > MAX_NEGATIVE:
                del self._negative[next(iter(self._negative))]
        else:
            self._negative.pop(path, None)
            self._entries[path] = cached
        return cached

    def listing(self, path: str) -> Listing | None:
        listing = self._listings.get(path)
        if listing is not None and listing.expiry > self.clock():
            return listing
        return None

    def put_listing(self, path: str, entries: list[Entry]) -> Listing:
        """Remember a directory's children; they answer lookups until the listing expires."""
        listing = Listing(entries, {e.name: e for e in entries}, self._expiry())
        self._listings[path] = listing
        for name in listing.by_name:
            child = posixpath.join(path, name) if path else name
            self._entries.pop(child, None)  # the listing is at least as new
            self._negative.pop(child, None)
        return listing

    def forget(self, path: str) -> None:
        """Drop what is kept for `path` itself (the kernel no longer knows the inode)."""
        self._entries.pop(path, None)
        self._listings.pop(path, None)

    def __len__(self) -> int:
        return len(self._entries) + len(self._negative) + len(self._listings)
