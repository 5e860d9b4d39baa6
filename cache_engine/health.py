"""Which tiers are in service: a tier that fails a write is set aside until it works again.

A tier is a directory someone else can break: an admin clears /dev/shm, a disk is remounted
read-only, other files fill the filesystem. A write that fails there takes the tier out of
service (counted, one warning per outage, not one per block): stores go to the next tier or
are served uncached, so a failing tier never fails a read. Blocks already in it stay readable
where they still are; a reader that finds one gone reports it and it is fetched again.
Maintenance calls `probe` every round: a tier out of service gets its directories created
again and a small write tried (and, after ENOSPC, room for the write that failed); if that
works it is back in service. A tier whose directories vanished is taken out by the probe too,
so it is noticed without waiting for a store.
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from dataclasses import dataclass

from eddy.base import log

from .blocks import FILE_MODE, make_tier_dirs, remove_quietly
from .tiers import Tier

PROBE_BYTES = 4096  # what a probe writes (and removes) in a tier's tmp/
_log = log.get("cache_engine.health")


@dataclass
class _Fault:
    """Why a tier is out of service: the error of the write that failed, and its size."""

    error: str
    room: int  # bytes that must be free before it is back (ENOSPC), else 0


class TierHealth:
    """Owns which tiers are in service and how often each was taken out.

    `Placement` asks `in_service` before it picks a tier and calls `fault` when a tier refuses
    a write; `Maintenance` calls `probe`; the engine's statistics read `in_service` and
    `faults`. Its own lock guards its state; it never takes the engine's lock.
    """

    def __init__(self, tiers: list[Tier]):
        self._tiers = list(tiers)
        self._lock = threading.Lock()
        self._out: dict[str, _Fault] = {}
        self._faults = {t.name: 0 for t in tiers}

    def in_service(self, tier: str) -> bool:
        return tier not in self._out

    def faults(self, tier: str) -> int:
        """Times the tier was taken out of service since start."""
        return self._faults[tier]

    def fault(self, tier: Tier, error: OSError | None, size: int = 0) -> None:
        """A write of `size` bytes to `tier` failed: take it out of service, unless it is."""
        reason = (error.strerror or str(error)) if error is not None else "copy failed"
        full = error is not None and error.errno in (errno.ENOSPC, errno.EDQUOT)
        with self._lock:
            if tier.name in self._out:
                return
            self._out[tier.name] = _Fault(reason, size if full else 0)
            self._faults[tier.name] += 1
        _log.warning("tier.out_of_service", tier=tier.name, path=tier.path, error=reason)

    def probe(self) -> None:
        """Take back each tier out of service that works again; take out each in service
        whose directories vanished (the next probe makes them again)."""
        for tier in self._tiers:
            fault = self._out.get(tier.name)
            if fault is None:
                if not os.path.isdir(tier.tmp_dir) or not os.path.isdir(tier.blocks_dir):
                    self.fault(tier, FileNotFoundError(errno.ENOENT, "directory vanished"))
                continue
            if _works(tier, fault.room):
                with self._lock:
                    del self._out[tier.name]
                _log.info("tier.back_in_service", tier=tier.name, path=tier.path,
                          was=fault.error)


def _works(tier: Tier, room: int) -> bool:
    """Whether the tier takes a write now: its directories made, `room` bytes free, and a
    small file written and removed in its tmp/ (which recovery clears after a crash)."""
    probe = os.path.join(tier.tmp_dir, f"probe-{uuid.uuid4().hex}")
    try:
        make_tier_dirs(tier)
        st = os.statvfs(tier.tmp_dir)
        if st.f_bavail * st.f_frsize < room + PROBE_BYTES:
            return False
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            if os.write(fd, bytes(PROBE_BYTES)) != PROBE_BYTES:
                return False
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        remove_quietly(probe)
    return True
