"""Kernel FUSE passthrough: open files whose `read` and `mmap` the kernel serves itself.

When the cache holds a file version whole in one immutable extent file, `open` can name that
file as the open file's backing file. The kernel then reads it in place and no request reaches
the mount daemon: docs/passthrough.md measured 7x the ordinary warm read. It takes Linux 6.9+
(CONFIG_FUSE_PASSTHROUGH), libfuse 3.17+, a pyfuse3 built with the passthrough patch (it has
`get_session_fd`) and a reader with `extent`; anything less, and every open reads as before.

The kernel has one rule for it: all open files of an inode either pass through to the same
backing id or none does, and an open that breaks it fails with EIO. So the first open of an
inode decides its mode, every open while any is still open follows it, and the backing id is
closed at the inode's last release.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pyfuse3
import trio

from eddy.base.errors import EddyError

BACKING_OPEN = 0x4010E501  # FUSE_DEV_IOC_BACKING_OPEN: struct {int32 fd; uint32 flags; u64}
BACKING_CLOSE = 0x4004E502  # FUSE_DEV_IOC_BACKING_CLOSE: the uint32 backing id
# The kernel or this session cannot pass through at all: asking again would only fail again.
_REFUSED = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EPERM, errno.EINVAL})

# (path, version, size, seconds it may wait for a prefetch) -> a file whose bytes are
# exactly that version's, or None
Extent = Callable[[str, str, int, float], str | None]
WAITING_OPENS = 8  # opens waiting for a prefetch at once; the others wait for a turn


def pyfuse3_has_passthrough() -> bool:
    """Whether this pyfuse3 can ask the kernel for passthrough (a build with the patch)."""
    return hasattr(pyfuse3, "get_session_fd")


class BackingFiles:
    """The mounted session's backing files, registered with the kernel through /dev/fuse."""

    def open(self, fd: int) -> int:
        """Register the file open at `fd`; the id holds its own reference, so `fd` may close."""
        # A bytearray, not bytes: only then does fcntl.ioctl return the ioctl's result (the id).
        arg = bytearray(struct.pack("iIQ", fd, 0, 0))
        return fcntl.ioctl(pyfuse3.get_session_fd(), BACKING_OPEN, arg, True)

    def close(self, backing_id: int) -> None:
        fcntl.ioctl(pyfuse3.get_session_fd(), BACKING_CLOSE, struct.pack("I", backing_id))


@dataclass
class _Inode:
    """What the open files of one inode share."""

    opens: int = 0  # open files, counting the opens still waiting for the first one's answer
    backing_id: int = 0  # 0: the files are read through the daemon
    decided: trio.Event = field(default_factory=trio.Event)


class Passthrough:
    """Which inodes the kernel reads from an extent, keeping the kernel's one-mode rule.

    Example::

        passthrough = Passthrough(reader.extent, BackingFiles(), limiter, logger)
        backing_id = await passthrough.open(inode, path, version, size)  # 0: open as before
        ...
        passthrough.release(inode)  # once for every open that returned
    """

    def __init__(self, extent: Extent, backing: BackingFiles, limiter: trio.CapacityLimiter,
                 logger):
        self._extent = extent
        self._backing = backing
        self._limiter = limiter
        # An open waiting for a prefetch holds its thread for seconds: not one of `limiter`'s.
        self._wait_limiter = trio.CapacityLimiter(WAITING_OPENS)
        self._log = logger
        self._inodes: dict[int, _Inode] = {}
        self._refused = False  # the kernel said no: every later open reads as before
        self._warned = False

    async def open(self, inode: int, path: str, version: str, size: int,
                   wait: float = 0.0) -> int:
        """The backing id a new open file of `inode` names, or 0 to read it as before; the
        engine may take up to `wait` seconds to answer, while a prefetch loads the file.

        Opens that arrive while the first open of an inode is asking for its extent wait
        for that answer, so two racing opens never name two different backing ids.
        """
        state = self._inodes.setdefault(inode, _Inode())
        state.opens += 1
        try:
            if state.opens > 1:
                await state.decided.wait()
            else:
                try:
                    state.backing_id = await self._backing_id(path, version, size, wait)
                finally:
                    state.decided.set()
        except BaseException:
            self.release(inode)
            raise
        return state.backing_id

    def resume(self, inode: int, backing_id: int) -> None:
        """Count an open file of `inode` that a predecessor daemon opened with `backing_id`.

        Backing ids belong to the connection, not the process: they stay valid across a
        resume, and the last release, whoever answers it, closes them."""
        state = self._inodes.setdefault(inode, _Inode())
        state.opens += 1
        state.backing_id = backing_id
        state.decided.set()

    def release(self, inode: int) -> None:
        """One open file of `inode` is gone; after the last, its backing id is closed."""
        state = self._inodes[inode]
        state.opens -= 1
        if state.opens:
            return
        del self._inodes[inode]
        if state.backing_id:
            self._backing.close(state.backing_id)

    async def _backing_id(self, path: str, version: str, size: int, wait: float) -> int:
        if self._refused or not version:  # a version-less file may change under its inode
            return 0
        try:
            return await trio.to_thread.run_sync(
                self._register, path, version, size, wait,
                limiter=self._wait_limiter if wait else self._limiter)
        except OSError as e:
            self._refused = e.errno in _REFUSED  # it was False, or this open would not ask
            level = self._log.debug if self._warned and not self._refused else self._log.warning
            self._warned = True
            level("passthrough open failed, reading through the daemon", path=path,
                  error=str(e), passthrough_off=self._refused)
            return 0

    def _register(self, path: str, version: str, size: int, wait: float) -> int:
        """In a worker thread: a backing id for the version's extent, 0 if it has none."""
        try:
            extent = self._extent(path, version, size, wait)
        except (OSError, EddyError) as e:  # the engine did not answer: read as before
            self._log.debug("no extent", path=path, error=str(e))
            return 0
        if extent is None:
            return 0
        fd = os.open(extent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            # The kernel reads the backing file to its own end, whatever size stat showed.
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                self._log.warning("extent does not match its file", path=path, extent=extent,
                                  size=size, extent_size=st.st_size)
                return 0
            return self._backing.open(fd)
        finally:
            os.close(fd)
