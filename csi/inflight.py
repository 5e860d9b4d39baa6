"""A per-key guard that answers ABORTED when an operation on the same key is already running.

The CSI spec asks plugins to refuse (ABORTED) a second call on a volume while one is in flight,
instead of queueing it; the caller (kubelet, the provisioner) retries with backoff.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from eddy.base.errors import Aborted


class InFlight:
    """The keys (volume ids, paths) an operation is running on, to refuse a concurrent second one.

    The node and controller services hold a volume's keys for the length of one RPC; a
    second call on any held key gets ABORTED, which the CO retries later."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: set[str] = set()

    @contextlib.contextmanager
    def hold(self, *keys: str) -> Iterator[None]:
        """Hold every key for the block; raise Aborted if any is held elsewhere."""
        with self._lock:
            busy = [k for k in keys if k in self._keys]
            if busy:
                raise Aborted(f"an operation on {busy[0]} is already in progress")
            self._keys.update(keys)
        try:
            yield
        finally:
            with self._lock:
                self._keys.difference_update(keys)
