"""Reusable page-aligned buffers for the blocks a mount's reader keeps in memory."""

from __future__ import annotations

import mmap
import threading


class BlockBuffers:
    """Reusable page-aligned block buffers.

    Reading a block into fresh memory costs a page fault per 4 KiB, and into unaligned memory
    a slow copy; reading into a recycled anonymous mapping costs neither. A buffer is reused
    only once no view of it is left (a reply still being sent to the kernel holds one).
    """

    def __init__(self, size: int, keep: int):
        self._size = size
        self._keep = keep
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def get(self, length: int) -> mmap.mmap | bytearray:
        if length > self._size:
            return bytearray(length)
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, self._size)

    def put(self, buf: mmap.mmap | bytearray) -> None:
        if not isinstance(buf, mmap.mmap):
            return
        try:
            buf.resize(self._size)  # refused while any view of the buffer is alive
        except BufferError:
            return  # still in use: the last view frees it
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buf)
                return
        buf.close()
