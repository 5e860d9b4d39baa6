"""The under-file-system (UFS) interface: the source a dataset is read from.

Every source kind (local directory, S3, HTTP, PVC) implements `UfsBackend`. The interface is
synchronous and thread-safe: callers on an event loop (the FUSE daemon) run it in worker threads,
so one slow ranged read never blocks others. Paths are relative POSIX paths inside the dataset
root ("" is the root itself); a backend never reads outside its root, whatever a path or a
symlink says. This interface only reads: what a writer-mode volume writes goes through
`local_writes.LocalWriter` (a directory source) or `s3_writes.py` (S3Ufs's own write calls).
"""

from __future__ import annotations

import abc
import errno
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum

from eddy.base.errors import Unavailable


class Kind(str, Enum):
    """What an entry is: a regular file, a directory or a symlink."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass(frozen=True, slots=True)
class Entry:
    """What the source says about one path.

    `version` changes whenever the content may have changed (an etag, or size + mtime); block
    keys include it, so a changed file never serves old bytes. `mode` (permission bits),
    `uid` and `gid` are None where the source has no such thing (object stores): the mount
    then shows the volume's defaults.
    """

    path: str
    kind: Kind
    size: int = 0
    mtime_ns: int = 0
    version: str = ""
    target: str | None = None  # for symlinks: the link text, already checked to stay inside
    mode: int | None = None  # st_mode & 0o7777 at the source, without the file type
    uid: int | None = None
    gid: int | None = None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


class UfsUnavailable(Unavailable, OSError):
    """The source cannot be reached or answered with an unexpected error."""


class VersionChanged(OSError):
    """The file changed at the source since the version the caller asked for."""


def clean_path(path: str) -> str:
    """Normalise a dataset-relative path; refuse anything that escapes the root."""
    if path in ("", ".", "/"):
        return ""
    norm = posixpath.normpath(path.lstrip("/"))
    if norm == "." :
        return ""
    if norm == ".." or norm.startswith("../"):
        raise PermissionError(f"path {path!r} leaves the dataset root")
    return norm


def read_path(path: str, offset: int, length: int) -> str:
    """The cleaned path of a `read` request, after checking the request makes sense."""
    rel = clean_path(path)
    if not rel:
        raise IsADirectoryError(errno.EISDIR, "is a directory", rel)
    if offset < 0 or length < 0:
        raise ValueError("offset and length must not be negative")
    return rel


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def walk_files(list_dir: Callable[[str], list[Entry]], top: str = "",
               stopped: Callable[[], bool] = lambda: False) -> Iterator[Entry]:
    """Every regular file under `top`, depth first in name order, listing with `list_dir`."""
    stack = [top]
    while stack and not stopped():
        entries = sorted(list_dir(stack.pop()), key=lambda e: e.path)
        yield from (e for e in entries if e.kind is Kind.FILE)
        stack.extend(e.path for e in reversed(entries) if e.kind is Kind.DIR)


def link_stays_inside(link_path: str, target: str) -> bool:
    """True when a symlink at `link_path` pointing to `target` resolves inside the root."""
    if target.startswith("/"):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    return not (resolved == ".." or resolved.startswith("../"))


class UfsBackend(abc.ABC):
    """A read-only view of one dataset root at a source.

    Raises FileNotFoundError for missing paths, NotADirectoryError / IsADirectoryError for the
    wrong kind, PermissionError for paths outside the root, and UfsUnavailable when the source
    itself fails. Messages never contain credentials.
    """

    #: a short URI-like description for logs and status, without credentials
    description: str = ""

    @abc.abstractmethod
    def stat(self, path: str) -> Entry:
        """The entry at `path` (symlinks are not followed)."""

    @abc.abstractmethod
    def list(self, path: str) -> list[Entry]:
        """The direct children of the directory at `path`, in a stable order."""

    @abc.abstractmethod
    def read(self, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        """Up to `length` bytes of the file at `offset` (short only at end of file), as bytes
        or another read-only bytes-like object (the S3 backend hands over obstore's buffer).

        With `version`, a backend that can tell raises VersionChanged instead of returning
        bytes of a different version.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the backend is not used afterwards."""
