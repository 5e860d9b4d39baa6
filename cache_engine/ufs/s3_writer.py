"""The mount's writer for an s3:// volume: `S3Writes` shaped as `local_writes.LocalWriter`.

The mount (csi/fuse/writes.py) calls one writer interface whatever the source: `open` gives a
file handle (write, read, truncate, flush, sync, stat, close), and the namespace calls follow
POSIX names. Over S3 (s3_writes.py) every handle of one path shares one staged file; close(2)
(FLUSH) and fsync upload it, so a failed upload is EIO where a writer can see it, and the
staged bytes stay on the node's disk until `retry_pending` gets them to S3. What S3 cannot
do is refused with a clear errno: symlinks and hard links (EPERM), rename flags (EINVAL), a
directory rename (EXDEV), writes into a large existing object without O_TRUNC (EOPNOTSUPP).
Modes, owners and times are not kept by S3: chmod, chown and utimes change nothing (the
volume's `uid`, `gid`, `fileMode` and `dirMode` say what is shown).
"""

from __future__ import annotations

import errno
import os
import threading
import time

from eddy.base import log

from .base import Entry, Kind
from .s3_writes import RetryDelays, S3Writes, StagedFile

_log = log.get("cache_engine.ufs.s3_writer")


class S3File:
    """One handle on a staged file (others of the same path share it)."""

    def __init__(self, writer: S3Writer, staged: StagedFile, append: bool):
        self._writer = writer
        self._staged = staged
        self._append = append
        self.path = staged.path

    def write(self, data: bytes, offset: int) -> int:
        return self._staged.append(data) if self._append else self._staged.write(offset, data)

    def read(self, size: int, offset: int) -> bytes:
        return self._staged.read(offset, size)

    def truncate(self, size: int) -> None:
        self._staged.truncate(size)

    def flush(self) -> None:
        """close(2) of a descriptor: upload what is staged (EIO if S3 refuses)."""
        self._staged.commit()

    def sync(self, datasync: bool = False) -> None:
        self._staged.commit()

    def stat(self) -> Entry:
        known = self._staged.entry
        if known is not None and not self._staged.dirty:
            return known
        return Entry(self.path, Kind.FILE, self._staged.size, time.time_ns(),
                     f"staged-{id(self._staged):x}-{self._staged.size}")

    def close(self) -> None:
        self._writer._close(self._staged)


class S3Writer:
    """Writes into an s3:// volume for the mount (see the module docstring)."""

    def __init__(self, writes: S3Writes):
        self._w = writes
        self._lock = threading.Lock()
        self._open: dict[str, tuple[StagedFile, int]] = {}  # path -> (staged file, handles)
        # An open and an upload of pending files never interleave: an open that could not
        # adopt a dead writer's staged file because the upload held it would start empty.
        self._staging = threading.Lock()

    def stat(self, path: str) -> Entry:
        return self._w.ufs.stat(path)

    def _exists(self, path: str) -> bool:
        """In S3, or staged and not uploaded yet (a dead daemon's file, reopened)."""
        try:
            self._w.ufs.stat(path)
        except FileNotFoundError:
            return any(m.path == path for m in self._w.pending())
        return True

    def open(self, path: str, flags: int, mode: int = 0o644,
             owner: tuple[int, int] | None = None) -> S3File:
        with self._staging:
            return self._open_file(path, flags)

    def _open_file(self, path: str, flags: int) -> S3File:
        with self._lock:
            shared = self._open.get(path)
        if shared is None and (flags & os.O_CREAT and flags & os.O_EXCL or
                               not flags & os.O_CREAT):
            exists = self._exists(path)
            if exists and flags & os.O_CREAT:
                raise FileExistsError(errno.EEXIST, "file exists", path)
            if not exists and not flags & os.O_CREAT:
                raise FileNotFoundError(errno.ENOENT, "no such file", path)
        truncate = bool(flags & os.O_TRUNC)
        with self._lock:
            shared = self._open.get(path)
            if shared is not None:
                staged, handles = shared
                self._open[path] = (staged, handles + 1)
        if shared is None:
            staged = self._w.open(path, truncate=truncate)
            with self._lock:
                self._open[path] = (staged, 1)
        elif truncate:
            staged.truncate(0)
        return S3File(self, staged, bool(flags & os.O_APPEND))

    def _close(self, staged: StagedFile) -> None:
        """A handle went: the last one closes the staged file (uploaded, or left pending)."""
        with self._lock:
            _, handles = self._open[staged.path]
            if handles > 1:
                self._open[staged.path] = (staged, handles - 1)
                return
            del self._open[staged.path]
        try:
            staged.close()
        except OSError as e:  # it stays staged: retry_pending takes it from here
            _log.warning("s3.close.pending", path=staged.path, error=str(e))

    def truncate(self, path: str, size: int) -> None:
        f = self.open(path, os.O_WRONLY | (os.O_TRUNC if size == 0 else 0))
        try:
            f.truncate(size)
            f.flush()
        finally:
            f.close()

    def mkdir(self, path: str, mode: int, owner: tuple[int, int] | None = None) -> None:
        self._w.mkdir(path)

    def symlink(self, path: str, target: str, owner: tuple[int, int] | None = None) -> None:
        raise PermissionError(errno.EPERM, "s3:// volumes hold no symlinks", path)

    def unlink(self, path: str) -> None:
        with self._lock:
            shared = self._open.get(path)
        if shared is not None:  # open and maybe never uploaded: its bytes go with it
            shared[0].discard()
            try:
                self._w.delete(path)
            except FileNotFoundError:
                pass
            return
        self._w.delete(path)

    def rmdir(self, path: str) -> None:
        self._w.rmdir(path)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        if flags:
            raise OSError(errno.EINVAL, "rename flags are not supported on s3:// volumes", old)
        with self._lock:
            shared = self._open.get(old)
        if shared is not None:
            shared[0].commit()  # the copy must hold what was written
        self._w.rename(old, new)

    def chmod(self, path: str, mode: int) -> None:
        """S3 keeps no modes: nothing changes (see the module docstring)."""

    def chown(self, path: str, uid: int, gid: int) -> None:
        """S3 keeps no owners: nothing changes."""

    def utime(self, path: str, atime_ns: int | None, mtime_ns: int | None) -> None:
        """S3 keeps no times but its own: nothing changes."""

    def retry_pending(self, stop: threading.Event,
                      delays: RetryDelays | None = None) -> None:
        """Until `stop`: upload staged files nobody holds (a failed close, a dead daemon's),
        waiting longer after each failure (`RetryDelays`), never giving them up."""
        waits = iter(delays or RetryDelays())
        while not stop.is_set():
            if not self._w.pending():
                waits = iter(delays or RetryDelays())
                stop.wait(5.0)
                continue
            with self._staging:
                done = self._w.upload_pending()
            if done.uploaded:
                _log.info("s3.pending.uploaded", paths=done.uploaded[:10])
            stop.wait(next(waits) if done.failed else 5.0)
