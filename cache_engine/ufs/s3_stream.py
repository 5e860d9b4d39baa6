"""A multipart upload fed from a staging file while a sequential writer is still writing.

A 10 GiB checkpoint should not wait for close() to start uploading. `PartStream` runs one
`obstore.put` in a thread of its own over an iterator that hands it the staging file's bytes
a part at a time, as soon as the writer has written a whole part past what was handed; obstore
uploads up to `max_concurrency` parts at once and waits (blocking the iterator, never the
writer) when that many are in flight. `finish(size)` hands the tail, and obstore completes the
upload. The bytes a part was read from must not change afterwards: a writer that goes back
before `handed` calls `cancel()`, the iterator raises `StreamCancelled`, and obstore aborts the
multipart upload on the server, leaving nothing behind (the caller uploads the whole file
instead).

The stream reads its own duplicate of the file descriptor, so the writer may close its copy
while a cancelled stream is still aborting in the background.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator


class StreamCancelled(Exception):
    """Raised inside the part iterator, so that obstore aborts the multipart upload."""


class PartStream:
    """One streaming multipart upload of a staging file, from offset 0."""

    def __init__(self, upload: Callable[[Iterator[bytes]], str], fd: int, part_size: int,
                 name: str):
        self.part_size = part_size
        self.parts = 0  # parts handed to the upload so far
        self._fd = os.dup(fd)
        self._cond = threading.Condition()
        self._handed = 0  # bytes handed to the upload: the writer must not change them
        self._written = 0  # bytes written sequentially from 0
        self._final: int | None = None  # the size to complete at, once finish() is called
        self._cancelled = False
        self._etag = ""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(upload,),
                                        name=f"s3-stream {name}", daemon=True)
        self._thread.start()

    @property
    def handed(self) -> int:
        with self._cond:
            return self._handed

    @property
    def failed(self) -> bool:
        """The upload ended without completing (a part or the start of it failed)."""
        return not self._thread.is_alive() and self._error is not None

    def written(self, end: int) -> None:
        """The writer has written every byte before `end`."""
        with self._cond:
            if end > self._written:
                self._written = end
                self._cond.notify_all()

    def cancel(self) -> None:
        """Abort the upload; returns at once (the abort request runs in the stream's thread)."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def finish(self, size: int) -> str:
        """Hand everything up to `size`, wait for the upload to complete; its ETag.

        Raises what the upload raised (StreamCancelled after cancel(), or the S3 error)."""
        with self._cond:
            self._final = size
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._etag

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the upload's thread to end (a cancelled one has aborted); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self, upload: Callable[[Iterator[bytes]], str]) -> None:
        try:
            self._etag = upload(self._parts())
        except BaseException as e:  # noqa: BLE001 - kept for finish() to raise
            self._error = e
        finally:
            os.close(self._fd)

    def _parts(self) -> Iterator[bytes]:
        while True:
            with self._cond:
                while True:
                    if self._cancelled:
                        raise StreamCancelled("the writer went back before the streamed part")
                    limit = self._written if self._final is None else self._final
                    if self._final is not None or limit - self._handed >= self.part_size:
                        break
                    self._cond.wait()
                offset = self._handed
                length = min(self.part_size, limit - offset)
                if length <= 0:
                    return
                self._handed += length
            data = os.pread(self._fd, length, offset)
            if len(data) != length:
                raise StreamCancelled("the staging file is shorter than what was written")
            self.parts += 1
            yield data
