"""An open dataset on this node: its identity, allowed tiers, source backend and metadata.

A dataset id is a hash of what decides the bytes a reader may see: the source URI, the
endpoint, the region, the block size and who reads (an HMAC of the access key pair under the
node's own key, or "anonymous"). Two volumes of one source with the same credentials therefore
share blocks; different credentials never do, and the id reveals nothing about the secret.

Volumes that share a dataset keep their own settings (`shared_spec`, README "Volumes that share
a dataset"): the engine applies the most generous of them, so no volume opened later can shrink
what another asked for, and a volume's settings leave with it (`Dataset.leave`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import posixpath
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from .budget import SourceBudget, SourceTimeout, call_within
from .metadata import MetadataCache
from .sequential import SequentialTracker
from .spec import PREFETCH_MODES, DatasetSpec
from .tiers import Tier
from .ufs.base import Entry, Kind, UfsBackend, UfsUnavailable

T = TypeVar("T")
ID_HEX_CHARS = 24
MAX_TRACKED_DIRS = 64  # directories whose scan (files opened in listing order) is followed
MAX_TIMED_OUT = 1024  # stats and lists whose last timeout is remembered (call_source)
MAX_PREFETCHED_FILES = 4096  # file versions remembered as already queued for `prefetch`


def credential_identity(secrets: dict[str, str], node_key: bytes) -> str:
    key_id = secrets.get("accessKeyId", "")
    secret = secrets.get("secretAccessKey", "")
    if not key_id and not secret:
        return "anonymous"
    return hmac.new(node_key, f"{key_id}\0{secret}".encode(), hashlib.sha256).hexdigest()


def dataset_id(spec: DatasetSpec, secrets: dict[str, str], node_key: bytes) -> str:
    parts = (spec.source.uri, spec.endpoint, str(spec.block_size),
             credential_identity(secrets, node_key))
    if spec.region:  # appended only when set: ids of datasets without one stay as they were
        parts += (f"region={spec.region}",)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:ID_HEX_CHARS]


def shared_spec(specs: Iterable[DatasetSpec]) -> DatasetSpec:
    """What the engine applies to a dataset that several volumes read, from their specs
    (oldest first; the newest gives what the rule below leaves alone).

    The blocks are shared, so each setting takes the value that serves every volume: the
    largest `cacheCapacity` (none, i.e. as much as the tiers hold, if any volume set none),
    the union of `tiers` (all of them if any volume named none), the shortest `metadataTTL`,
    the largest `readAhead`, `sourceTimeout` and `sourceConcurrency`, and the widest
    `prefetch` (`whole` over `safetensors` over `off`).
    """
    specs = list(specs)
    capacities = [s.cache_capacity for s in specs]
    ttls = [s.metadata_ttl for s in specs if s.metadata_ttl is not None]
    every_tier = any(not s.tiers for s in specs)
    return dataclasses.replace(
        specs[-1],
        cache_capacity=None if None in capacities else max(capacities),
        tiers=() if every_tier else tuple(dict.fromkeys(t for s in specs for t in s.tiers)),
        metadata_ttl=min(ttls) if ttls else None,
        read_ahead=max(s.read_ahead for s in specs),
        source_timeout=max(s.source_timeout for s in specs),
        source_concurrency=max(s.source_concurrency for s in specs),
        prefetch=max((s.prefetch for s in specs), key=PREFETCH_MODES.index))


def open_backend(open_ufs: Callable[[DatasetSpec, dict], UfsBackend], spec: DatasetSpec,
                 secrets: dict) -> UfsBackend:
    """`open_ufs(spec, secrets)`, given up after the spec's metadata timeout: opening may ask
    the source already (an HTTP HEAD, a stat of an NFS root) and must not hang an engine
    thread. A backend opened too late is closed."""
    return call_within(lambda: open_ufs(spec, secrets), spec.metadata_timeout,
                       f"opening source {spec.source.uri}", lambda ufs: ufs.close())


class _Lease:
    """A backend plus how many calls use it, so a replaced backend closes when idle."""

    def __init__(self, backend: UfsBackend):
        self.backend = backend
        self.users = 0
        self.retired = False


class Dataset:
    """One open dataset on this node: its spec, allowed tiers, source backend and metadata.

    The engine makes one per dataset id (`CacheEngine.open_dataset`) and calls it on every
    lookup: `call_source` runs a source operation within the dataset's budget and deadline,
    `source()` leases the backend (a rotated secret replaces it; the old one closes
    when idle), `meta` answers stat and list within the TTL, `sequential` and `next_files`
    decide read-ahead. `hits` and `misses` are counted under the engine's lock.
    """

    def __init__(self, id: str, spec: DatasetSpec, node_tiers: list[Tier], ufs: UfsBackend,
                 clock: Callable[[], float], volume_id: str = ""):
        self.id = id
        self._node_tiers = node_tiers
        self._specs = {volume_id: spec}  # each volume's own, in the order they came
        self.spec = spec  # what applies: `shared_spec` of them
        self.tiers = self._allowed(spec)
        self.meta = MetadataCache(spec.metadata_ttl, clock)
        self._lock = threading.Lock()
        self._lease = _Lease(ufs)
        self.budget = SourceBudget(id, spec.source_concurrency)
        self._sequential = SequentialTracker()  # by path
        self._scans: OrderedDict[str, _Scan] = OrderedDict()  # by directory
        self._timed_out: OrderedDict[str, float] = OrderedDict()  # stat/list: when it failed
        self._prefetched: OrderedDict[tuple[str, str], None] = OrderedDict()  # path, version
        self.hits = 0  # block lookups found cached / not (the engine's lock guards both)
        self.misses = 0
        self.source_error = ""  # why the last source request failed as unreachable, if it did

    @property
    def volumes(self) -> tuple[str, ...]:
        """The volumes that read it now, for status."""
        with self._lock:
            return tuple(sorted(v for v in self._specs if v))

    @property
    def block_size(self) -> int:
        return self.spec.block_size

    def block_count(self, file_size: int) -> int:
        """How many blocks a file of `file_size` bytes has."""
        return -(-file_size // self.spec.block_size)

    @property
    def read_ahead(self) -> int:
        return self.spec.read_ahead

    def capacity(self) -> int:
        """Bytes the dataset can keep cached at rest: its `cacheCapacity`, bounded by what its
        tiers hold without maintenance pushing blocks out (low watermark above the last tier,
        high watermark in the last)."""
        tiers, cap = self.tiers, self.spec.cache_capacity
        held = sum(int(t.size * t.low) for t in tiers[:-1]) + int(tiers[-1].size * tiers[-1].high)
        return held if cap is None else min(cap, held)

    def _allowed(self, spec: DatasetSpec) -> list[Tier]:
        return [t for t in self._node_tiers if not spec.tiers or t.name in spec.tiers]

    def _apply(self) -> None:
        """Apply `shared_spec` of the volumes' specs (under `_lock`)."""
        self.spec = shared_spec(self._specs.values())
        self.tiers = self._allowed(self.spec)
        self.meta.ttl = self.spec.metadata_ttl
        self.budget.slots = self.spec.source_concurrency

    def join(self, volume_id: str, spec: DatasetSpec, ufs: UfsBackend) -> None:
        """A volume (again) opened it with `spec`; `ufs` replaces the backend (secrets may
        have rotated; the old backend closes once idle)."""
        with self._lock:
            self._specs.pop(volume_id, None)
            self._specs[volume_id] = spec
            self._apply()
            old, self._lease = self._lease, _Lease(ufs)
            old.retired = True
            idle = old.users == 0
        if idle:
            old.backend.close()

    def leave(self, volume_id: str) -> bool:
        """The volume no longer reads it: its settings stop counting. The last volume's stay
        (the blocks stay cached for the next). Whether anything changed."""
        with self._lock:
            if volume_id not in self._specs or len(self._specs) == 1:
                return False
            del self._specs[volume_id]
            self._apply()
            return True

    def stat_fresh(self, path: str) -> tuple[Entry, float]:
        """The entry at `path` (clean), and the seconds it stays fresh (inf: immutable): a
        cache that keeps it keeps it no longer, so a change shows within one TTL."""
        cached = self.meta.entry(path)
        if cached is None or cached.entry is None:  # absence is never cached here
            entry = self.call_source(lambda ufs: ufs.stat(path), f"stat of {path!r}")
            cached = self.meta.put_entry(path, entry)
        return cached.entry, self.meta.remaining(cached.expiry)

    def list_fresh(self, path: str) -> tuple[list[Entry], float]:
        """A directory's entries, and the seconds they stay fresh (as `stat_fresh`)."""
        listing = self.meta.listing(path)
        if listing is None:
            entries = self.call_source(lambda ufs: ufs.list(path), f"list of {path!r}")
            listing = self.meta.put_listing(path, entries)
        return list(listing.entries), self.meta.remaining(listing.expiry)

    def call_source(self, op: Callable[[UfsBackend], T], what: str,
                    deadline: float | None = None, taken: bool = False) -> T:
        """`op(backend)` within the dataset's budget (`budget.SourceBudget`): SourceTimeout
        past `deadline` (time.monotonic; default: `metadata_timeout` from now, for a stat or a
        list). `taken`: the caller holds a slot from `budget.try_take`.

        A stat or list (known by `what`) that timed out less than `metadata_timeout` ago
        fails again at once: the kernel asks again for a name whose lookup failed, and queues
        every other reader of that name behind the one asking, so N readers of one file on a
        source that trickles would otherwise wait N deadlines each.
        """
        metadata, failed = deadline is None, None
        now = time.monotonic()
        if metadata:
            deadline = now + self.spec.metadata_timeout
            with self._lock:
                failed = self._timed_out.get(what)
            if failed is not None and now - failed < self.spec.metadata_timeout:
                raise SourceTimeout(f"source of dataset {self.id}: {what} timed out "
                                    f"{now - failed:.1f} s ago (sourceTimeout)")

        def leased() -> T:
            with self.source() as ufs:
                return op(ufs)

        try:
            result = self.budget.run(leased, deadline, what, taken)
        except SourceTimeout as e:
            self.source_error = str(e)
            if metadata:
                with self._lock:
                    self._timed_out[what] = time.monotonic()
                    self._timed_out.move_to_end(what)
                    if len(self._timed_out) > MAX_TIMED_OUT:
                        self._timed_out.popitem(last=False)
            raise
        if metadata and failed is not None:
            with self._lock:
                self._timed_out.pop(what, None)
        return result

    @contextlib.contextmanager
    def source(self) -> Iterator[UfsBackend]:
        """The current backend, kept open until the caller is done with it."""
        with self._lock:
            lease = self._lease
            lease.users += 1
        try:
            yield lease.backend
        except UfsUnavailable as e:
            self.source_error = str(e) or type(e).__name__
            raise
        else:
            self.source_error = ""
        finally:
            with self._lock:
                lease.users -= 1
                idle = lease.retired and lease.users == 0
            if idle:
                lease.backend.close()

    def close(self) -> None:
        with self._lock:
            self._lease.retired = True
            idle = self._lease.users == 0
        if idle:
            self._lease.backend.close()

    def sequential(self, path: str, index: int) -> bool:
        """Record a block request; True when it continues a sequential run of `path`."""
        with self._lock:
            return self._sequential.note(path, index)

    def claim_prefetch(self, path: str, version: str) -> bool:
        """True the first time this file version is claimed for a whole-file prefetch (of
        the last MAX_PREFETCHED_FILES claimed): a file is queued once, not at every read."""
        file = (path, version)
        with self._lock:
            if file in self._prefetched:
                self._prefetched.move_to_end(file)
                return False
            self._prefetched[file] = None
            if len(self._prefetched) > MAX_PREFETCHED_FILES:
                self._prefetched.popitem(last=False)
            return True

    def next_files(self, path: str, count: int) -> list[Entry]:
        """Record that `path` is being read from its start; the next `count` files of its
        directory when this continues a scan, else [].

        A scan is files read in the order of their directory's listing (`find | xargs cat`, a
        tokenizer loading its files, a data loader walking a folder): each file follows the one
        read before it, or skips one. Only a listing the dataset already holds is used: this
        never lists a directory by itself.
        """
        parent = posixpath.dirname(path)
        listing = self.meta.listing(parent)
        entries = listing.entries if listing is not None else None
        if not entries:
            return []
        with self._lock:
            scan = self._scans.get(parent)
            if scan is None or scan.entries is not entries:  # a new or refreshed listing
                scan = self._scans[parent] = _Scan(entries)
                if len(self._scans) > MAX_TRACKED_DIRS:
                    self._scans.popitem(last=False)
            self._scans.move_to_end(parent)
            pos = scan.positions.get(path)
            if pos is None:
                return []
            last, scan.last = scan.last, pos
        if last is None or not 0 < pos - last <= 2:
            return []
        return [e for e in entries[pos + 1:pos + 1 + count] if e.kind is Kind.FILE and e.size]

    def scan_reached(self, path: str) -> None:
        """The reader was handed `path` with the file it asked for: its folder's scan goes on
        from there, as if `path` had been asked for."""
        parent = posixpath.dirname(path)
        with self._lock:
            scan = self._scans.get(parent)
            pos = scan.positions.get(path) if scan is not None else None
            if pos is not None:
                scan.last = pos


class _Scan:
    """Where a directory's reader is in its listing."""

    def __init__(self, entries: list[Entry]):
        self.entries = entries
        self.positions = {e.path: i for i, e in enumerate(entries)}
        self.last: int | None = None
