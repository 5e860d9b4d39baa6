"""One file being written to an s3:// volume: its bytes on the node's disk until S3 has them.

Writes, truncates and reads go to the staging file (a writer reads back what it wrote);
`commit()` uploads it (what fsync and close call). While the writer writes strictly in order
(each write starts where the last ended), whole parts go up in the background as a multipart
upload (`s3_stream.PartStream`), so a commit only waits for the tail. Any other write or a
shrinking truncate cancels that upload (aborted on the server) and the commit uploads the whole
file. A failed upload raises `UploadFailed` (EIO) and keeps the staged file and its manifest:
the next commit, or `S3Writes.upload_pending()` after a restart, tries again.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

from eddy.base import log

from .base import Entry, Kind
from .s3 import S3Ufs
from .s3_staging import CLEAN, DIRTY, Manifest, StagingDir
from .s3_stream import PartStream, StreamCancelled

_log = log.get("cache_engine.ufs.s3_writes")


class UploadFailed(OSError):
    """S3 did not take a staged file (errno EIO); its bytes stay on the node for a retry."""


@dataclass
class WriteStatistics:
    """What a staged file did, for tests and logs."""

    streams_started: int = 0  # multipart uploads started while the writer was writing
    streams_cancelled: int = 0  # ... and aborted because the writer went back
    streamed_parts: int = 0  # parts those uploads were handed
    whole_uploads: int = 0  # commits that uploaded the whole staged file


@dataclass(frozen=True)
class UploadSettings:
    """How a staged file uploads: the part size and how many parts are in flight at once."""

    part_size: int
    max_concurrency: int


def describe(e: BaseException) -> str:
    """The reason in an OSError (or any error), without the errno noise."""
    return (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__


class StagedFile:
    """A file of an s3:// volume open for writing; one per path at a time (share it among the
    handles of one inode). Thread-safe: writes and commits may come from several threads.
    Close or discard it: one dropped while it streams keeps its lock until the process ends."""

    def __init__(self, ufs: S3Ufs, staging: StagingDir, manifest: Manifest, fd: int, *,
                 settings: UploadSettings, entry: Entry | None = None):
        self.path = manifest.path
        self.entry = entry  # what S3 holds for the path since the last commit (None: unknown)
        self.statistics = WriteStatistics()
        self._ufs = ufs
        self._staging = staging
        self._manifest = manifest
        self._fd = fd
        # Closing the descriptor releases the staged file's lock: if this object is dropped
        # unclosed (its writer gone), upload_pending() and open() can take the file over.
        self._release = weakref.finalize(self, os.close, fd)
        self._settings = settings
        self._lock = threading.Lock()  # local state; never held across S3 I/O
        self._commit_lock = threading.Lock()  # one commit at a time
        self._size = os.fstat(fd).st_size
        self._dirty = manifest.state == DIRTY
        self._generation = 0  # counts changes, so a commit knows whether it saw the last one
        self._next = self._size  # where a sequential writer's next write starts
        self._sequential = True
        self._committing = False
        self._stream: PartStream | None = None
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def dirty(self) -> bool:
        """True while S3 does not hold the staged bytes."""
        return self._dirty

    @property
    def where(self) -> str:
        return f"s3://{self._manifest.bucket}/{self._manifest.key}"

    def write(self, offset: int, data: bytes | memoryview) -> int:
        """Write `data` at `offset` into the staging file; the number of bytes written."""
        if offset < 0:
            raise OSError(errno.EINVAL, "negative offset", self.path)
        with self._lock:
            self._check_open()
            if offset != self._next:
                self._stop_streaming()
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.pwrite(self._fd, view[done:], offset + done)
            self._size = max(self._size, offset + done)
            self._changed()
            if self._sequential:
                self._next = offset + done
                self._feed_stream()
        return done

    def append(self, data: bytes | memoryview) -> int:
        """Write at the end (O_APPEND)."""
        with self._lock:
            offset = self._size
        return self.write(offset, data)

    def truncate(self, size: int) -> None:
        """Cut or extend (with zeros) the file to `size` bytes."""
        if size < 0:
            raise OSError(errno.EINVAL, "negative size", self.path)
        with self._lock:
            self._check_open()
            if size == self._size:
                return
            if size < self._size and self._stream is not None:
                self._stop_streaming()
            os.ftruncate(self._fd, size)
            self._size = size
            self._next = min(self._next, size)
            self._changed()

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the staged file (what this writer wrote, over what was downloaded)."""
        self._check_open()
        return os.pread(self._fd, length, offset)

    def commit(self) -> Entry | None:
        """Upload the staged bytes unless S3 already holds them; what S3 now shows.

        Raises UploadFailed (EIO) when S3 does not take them: they stay staged and dirty.
        """
        with self._commit_lock:
            with self._lock:
                self._check_open()
                if not self._dirty:
                    return self.entry
                size, generation, stream = self._size, self._generation, self._stream
                self._stream, self._committing = None, True
            try:
                etag = self._upload(size, stream)
            except Exception as e:
                with self._lock:
                    self._committing = False
                    if not self._closed:  # else discarded meanwhile: nothing to keep
                        os.fsync(self._fd)  # the only copy now: survive a node crash
                        self._manifest = self._staging.failed(self._manifest, size,
                                                              describe(e))
                    attempts = self._manifest.attempts
                _log.warning("s3.upload.failed", key=self.where, size=size,
                             attempts=attempts, reason=describe(e))
                raise UploadFailed(
                    errno.EIO, f"upload of {self.where} ({size} bytes) failed: {describe(e)}; "
                    "the bytes stay staged on this node and are uploaded again", self.path,
                ) from None
            entry = self._entry_after(etag, size)
            with self._lock:
                self._committing, self.entry = False, entry
                self._sequential, self._next = True, self._size  # a new stream may start
                if generation == self._generation and not self._closed:
                    self._dirty = False
                    self._manifest = replace(self._manifest, size=size, state=CLEAN,
                                             etag=etag, error="")
                    self._staging.save(self._manifest)
            return entry

    def close(self) -> Entry | None:
        """Commit, then drop the staged file. On UploadFailed it stays on disk, pending, for
        `S3Writes.upload_pending()`; this object is closed either way."""
        try:
            return self.commit() if not self._closed else self.entry
        finally:
            with self._lock:
                if not self._closed:
                    self._closed = True
                    if not self._dirty:
                        self._staging.remove(self._manifest)
                    self._release()  # upload_pending() may take a dirty one now

    def discard(self) -> None:
        """Drop the staged bytes without uploading (the file was unlinked)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop_streaming()
            self._staging.remove(self._manifest)
            self._release()

    # -- inside the lock ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "staged file is closed", self.path)

    def _changed(self) -> None:
        self._generation += 1
        if not self._dirty:
            self._dirty = True
            self._manifest = replace(self._manifest, state=DIRTY)
            self._staging.save(self._manifest)

    def _stop_streaming(self) -> None:
        """The writer left the sequential path: no streaming until the next commit."""
        self._sequential = False
        if self._stream is not None:
            self._stream.cancel()
            self.statistics.streams_cancelled += 1
            self._stream = None

    def _feed_stream(self) -> None:
        part = self._settings.part_size
        if self._stream is None and not self._committing and self._next >= part:
            self._stream = PartStream(self._stream_upload, self._fd, part, self.where)
            self.statistics.streams_started += 1
        if self._stream is not None:
            self._stream.written(self._next)

    # -- outside the lock --------------------------------------------------------------------

    def _stream_upload(self, parts) -> str:
        return self._ufs.put(self.path, self._counted(parts), part_size=self._settings.part_size,
                             max_concurrency=self._settings.max_concurrency)

    def _counted(self, parts):
        for part in parts:
            self.statistics.streamed_parts += 1
            yield part

    def _upload(self, size: int, stream: PartStream | None) -> str:
        if stream is not None:
            try:
                return stream.finish(size)
            except StreamCancelled:
                pass
            except Exception as e:  # noqa: BLE001 - the whole upload below is the fallback
                _log.warning("s3.stream.failed", key=self.where, reason=describe(e))
        self.statistics.whole_uploads += 1
        data = Path(self._staging.data_path(self._manifest))
        return self._ufs.put(self.path, data, part_size=self._settings.part_size,
                             max_concurrency=self._settings.max_concurrency)

    def _entry_after(self, etag: str, size: int) -> Entry:
        """What the read side will see: the object's own stat when it is ours."""
        try:
            entry = self._ufs.stat(self.path)
            if entry.kind is Kind.FILE and (not etag or entry.version == etag):
                return entry
        except OSError:
            pass
        return Entry(self.path, Kind.FILE, size, time.time_ns(), etag)
