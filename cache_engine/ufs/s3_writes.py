"""Writing to an s3:// volume: what the FUSE layer calls in writer modes, without FUSE.

A file opened for writing becomes a `StagedFile` (s3_staged_file.py): its bytes live in the
volume's staging directory on the node's disk (s3_staging.py) and go to S3 on commit (fsync,
close), streamed as a multipart upload while a sequential writer is still writing. Nothing is
silently lost: a failed upload is EIO at commit and the staged file stays, with its manifest,
until `upload_pending()` (which a restarted daemon calls, and a caller may repeat with
`RetryDelays`) gets it to S3; a staged file of a dead writer is found and adopted again.
`drain()` at unstage raises `StagedUploadsLeft` while anything is left, never drops it.

The namespace operations follow S3's model and refuse what it cannot do atomically:

- open without O_TRUNC of an existing object downloads it first, only up to `download_limit`
  bytes; a larger one is refused with EOPNOTSUPP (random writes into a large object would
  mean uploading all of it again; open it with O_TRUNC to replace it).
- rename of a file is a server-side copy, then a delete of the source (not atomic: a crash
  between leaves both; both hold the same bytes). S3 copies at most 5 GiB in one request.
- rename of a directory, or of a file over 5 GiB, is refused with EXDEV, not ENOTSUP: S3 has
  no directories to rename (every key below would be copied and deleted one by one, visibly
  half done if interrupted), and EXDEV is what rename(2) says across filesystems, which `mv`
  and `shutil.move` answer by copying and deleting themselves, file by file, through the
  mount. ENOTSUP would make them simply fail.
- mkdir writes the zero-byte "dir/" marker (`S3Ufs.put_marker`); rmdir deletes it, ENOTEMPTY
  while other keys lie below.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from eddy.base import log
from eddy.base.errors import Unavailable

from .base import Entry, Kind, UfsUnavailable, read_path
from .s3 import DEFAULT_PART_SIZE, S3Ufs
from .s3_staged_file import StagedFile, UploadFailed, UploadSettings, describe
from .s3_staging import CLEAN, DIRTY, Manifest, StagingDir

DEFAULT_DOWNLOAD_LIMIT = 64 << 20
COPY_LIMIT = 5 << 30  # S3's CopyObject limit

_log = log.get("cache_engine.ufs.s3_writes")

__all__ = ["PendingUploads", "RetryDelays", "S3Writes", "StagedFile", "StagedUploadsLeft",
           "UploadFailed"]


@dataclass
class PendingUploads:
    """What one `upload_pending()` did, by dataset path."""

    uploaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # path -> why
    busy: list[str] = field(default_factory=list)  # held by a live writer: not touched


@dataclass
class RetryDelays:
    """Seconds to wait before each retry of pending uploads: doubling, capped, never ending
    (data is never given up; unstage decides what happens to what is left)."""

    first: float = 1.0
    cap: float = 60.0

    def __iter__(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(delay * 2, self.cap)


class StagedUploadsLeft(Unavailable):
    """Staged files S3 has not taken yet: the volume must not go away (retry later)."""


def _io_error(e: OSError, path: str) -> OSError:
    """An S3 failure as the errno a pod sees: an unreachable source is EIO."""
    if isinstance(e, UfsUnavailable) or e.errno is None:
        return OSError(errno.EIO, describe(e), path)
    return e


class S3Writes:
    """The write side of one s3:// volume: staged files in `staging`, uploaded through `ufs`."""

    def __init__(self, ufs: S3Ufs, staging: StagingDir, *, part_size: int = DEFAULT_PART_SIZE,
                 max_concurrency: int = 4, download_limit: int = DEFAULT_DOWNLOAD_LIMIT):
        if part_size < 5 << 20:
            raise ValueError("part_size must be at least 5 MiB (S3's smallest part)")
        self.ufs = ufs
        self.staging = staging
        self.download_limit = download_limit
        self._settings = UploadSettings(part_size, max_concurrency)

    def open(self, path: str, *, truncate: bool = False) -> StagedFile:
        """A staged file for `path`: empty with `truncate` (O_TRUNC; also a new file),
        otherwise the object's bytes (downloaded, up to `download_limit`) or empty if there
        is none. A staged file a dead writer left for the path is adopted instead."""
        rel = read_path(path, 0, 0)
        adopted = self._adopt(rel)
        if adopted is not None:
            if truncate:
                adopted.truncate(0)
            return adopted
        entry = None
        if not truncate:
            try:
                entry = self.ufs.stat(rel)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise _io_error(e, rel) from None
            if entry is not None and entry.kind is Kind.DIR:
                raise IsADirectoryError(errno.EISDIR, "is a directory", rel)
            if entry is not None and entry.size > self.download_limit:
                raise OSError(
                    errno.EOPNOTSUPP,
                    f"{self._where(rel)} is {entry.size} bytes: writing into an existing "
                    f"object over {self.download_limit} bytes is not supported on s3:// "
                    "volumes (open it with O_TRUNC to replace it)", rel)
        state = DIRTY if entry is None else CLEAN
        manifest, fd = self.staging.create(self.ufs.bucket, self.ufs.key(rel), rel, state)
        try:
            if entry is not None and entry.size:
                data = self.ufs.read(rel, 0, entry.size, version=entry.version)
                os.pwrite(fd, data, 0)
        except BaseException as e:
            os.close(fd)
            self.staging.remove(manifest)
            raise _io_error(e, rel) if isinstance(e, OSError) else e from None
        return StagedFile(self.ufs, self.staging, manifest, fd, settings=self._settings,
                          entry=entry)

    def delete(self, path: str) -> None:
        """unlink: the object and any staged bytes a dead writer left for it."""
        rel = read_path(path, 0, 0)
        dropped = self._drop_staged(rel)
        try:
            if self.ufs.stat(rel).kind is Kind.DIR:
                raise IsADirectoryError(errno.EISDIR, "is a directory", rel)
            self.ufs.delete(rel)
        except FileNotFoundError:
            if not dropped:
                raise
        except OSError as e:
            raise _io_error(e, rel) from None

    def rename(self, src: str, dst: str) -> Entry:
        """rename of a file: copy on the server, then delete the source; the new entry."""
        rel, to = read_path(src, 0, 0), read_path(dst, 0, 0)
        try:
            self._upload_staged(rel)  # a dead writer's bytes first, or they would come back
            entry = self.ufs.stat(rel)
            if entry.kind is Kind.DIR or entry.size > COPY_LIMIT:
                what = "a directory" if entry.kind is Kind.DIR else "a file over 5 GiB"
                raise OSError(errno.EXDEV, f"renaming {what} is not supported on s3:// "
                              "volumes; copy and delete instead", rel)
            with contextlib.suppress(FileNotFoundError):
                if self.ufs.stat(to).kind is Kind.DIR:
                    raise IsADirectoryError(errno.EISDIR, "is a directory", to)
            self._drop_staged(to)
            self.ufs.copy(rel, to)
        except OSError as e:
            raise _io_error(e, rel) from None
        try:
            self.ufs.delete(rel)
        except OSError as e:
            raise OSError(errno.EIO, f"{self._where(rel)} was copied to {self._where(to)} but "
                          f"could not be deleted: {describe(e)}", rel) from None
        try:
            return self.ufs.stat(to)
        except OSError as e:
            raise _io_error(e, to) from None

    def mkdir(self, path: str) -> None:
        """mkdir: the "dir/" marker; EEXIST when anything is at `path`."""
        rel = read_path(path, 0, 0)
        try:
            self.ufs.stat(rel)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _io_error(e, rel) from None
        else:
            raise FileExistsError(errno.EEXIST, "file exists", rel)
        try:
            self.ufs.put_marker(rel)
        except OSError as e:
            raise _io_error(e, rel) from None

    def rmdir(self, path: str) -> None:
        """rmdir: delete the "dir/" marker; ENOTDIR for a file, ENOTEMPTY while keys lie
        below (a directory without a marker exists only through such keys)."""
        rel = read_path(path, 0, 0)
        try:
            if self.ufs.stat(rel).kind is not Kind.DIR:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", rel)
            if self.ufs.has_keys_below(rel):
                raise OSError(errno.ENOTEMPTY, "directory not empty", rel)
            self.ufs.delete_marker(rel)
        except OSError as e:
            raise _io_error(e, rel) from None

    def pending(self) -> list[Manifest]:
        """Staged files S3 does not hold yet (a live writer's included), oldest first."""
        return self.staging.pending()

    def upload_pending(self) -> PendingUploads:
        """Upload every staged file no live writer holds and S3 does not hold yet; drop the
        ones it holds. A failure is recorded in the manifest and the file kept for the next
        call."""
        done = PendingUploads()
        for manifest in self.staging.manifests():
            fd = self.staging.claim(manifest)
            if fd is None:
                if not os.path.exists(self.staging.data_path(manifest)):
                    self.staging.remove(manifest)  # removed but for its manifest
                elif manifest.state == DIRTY:
                    done.busy.append(manifest.path)
                continue
            try:
                if manifest.state == CLEAN:
                    self.staging.remove(manifest)
                    continue
                self._upload_claimed(manifest, fd)
                done.uploaded.append(manifest.path)
            except OSError as e:
                done.failed[manifest.path] = describe(e)
            finally:
                os.close(fd)
        return done

    def drain(self) -> None:
        """Before the volume goes away (unstage): upload everything staged; raise
        StagedUploadsLeft, naming what S3 has not taken, rather than drop it."""
        result = self.upload_pending()
        left = {**result.failed, **dict.fromkeys(result.busy, "still open for writing")}
        if left:
            shown = "; ".join(f"{path}: {why}" for path, why in sorted(left.items())[:5])
            raise StagedUploadsLeft(
                f"{len(left)} file(s) written to s3://{self.ufs.bucket} are not in S3 yet and "
                f"stay staged in {self.staging.path} ({shown}); unstage again to retry")

    # -- helpers -----------------------------------------------------------------------------

    def _where(self, rel: str) -> str:
        return f"s3://{self.ufs.bucket}/{self.ufs.key(rel)}"

    def _staged_for(self, rel: str) -> Iterator[tuple[Manifest, int]]:
        """Staged files of `rel` in this volume that no live writer holds, claimed."""
        key = self.ufs.key(rel)
        for manifest in self.staging.manifests():
            if manifest.bucket == self.ufs.bucket and manifest.key == key:
                fd = self.staging.claim(manifest)
                if fd is not None:
                    yield manifest, fd

    def _adopt(self, rel: str) -> StagedFile | None:
        adopted = None
        for manifest, fd in self._staged_for(rel):  # the newest wins; older ones are stale
            if adopted is not None:
                adopted.discard()
                adopted = None
            if manifest.state == CLEAN:  # a copy of what S3 holds, perhaps no longer
                os.close(fd)
                self.staging.remove(manifest)
                continue
            adopted = StagedFile(self.ufs, self.staging, manifest, fd, settings=self._settings)
        return adopted

    def _drop_staged(self, rel: str) -> bool:
        dropped = False
        for manifest, fd in self._staged_for(rel):
            dropped |= manifest.state == DIRTY
            os.close(fd)
            self.staging.remove(manifest)
        return dropped

    def _upload_staged(self, rel: str) -> None:
        for manifest, fd in self._staged_for(rel):
            try:
                if manifest.state == DIRTY:
                    self._upload_claimed(manifest, fd)
                else:
                    self.staging.remove(manifest)
            finally:
                os.close(fd)

    def _upload_claimed(self, manifest: Manifest, fd: int) -> None:
        """Upload a claimed staged file as it is on disk; remove it, or record the failure."""
        size = os.fstat(fd).st_size
        if manifest.bucket != self.ufs.bucket or manifest.key != self.ufs.key(manifest.path):
            raise OSError(errno.EINVAL, f"staged for s3://{manifest.bucket}/{manifest.key}, "
                          f"not for this volume ({self._where(manifest.path)})")
        try:
            self.ufs.put(manifest.path, Path(self.staging.data_path(manifest)),
                         part_size=self._settings.part_size,
                         max_concurrency=self._settings.max_concurrency)
        except OSError as e:
            self.staging.failed(manifest, size, describe(e))
            _log.warning("s3.upload.failed", key=self._where(manifest.path), size=size,
                         attempts=manifest.attempts + 1, reason=describe(e))
            raise UploadFailed(errno.EIO, f"upload of {self._where(manifest.path)} failed: "
                               f"{describe(e)}", manifest.path) from None
        self.staging.remove(manifest)
        _log.info("s3.upload.pending_done", key=self._where(manifest.path), size=size)
