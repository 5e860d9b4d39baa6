"""A directory on the node as a dataset source (`local:///abs/dir`).

Reads use `os.pread` on a file opened with O_NOFOLLOW below a root directory fd, and every path
component is opened relative to its parent without following symlinks, so neither a `..` nor a
symlink can make eddy read outside the root. The root itself is opened the same way, one
component at a time from `/`: an allowlist of source directories means nothing if
`/srv/shared/up/etc` with `up -> /` may name /etc. Files are opened O_NONBLOCK and must still be
regular files once open, so a file swapped for a FIFO or a device fails at once instead of
blocking a reader forever.
"""

from __future__ import annotations

import errno
import os
import stat as statmod

from .base import (
    Entry,
    Kind,
    UfsBackend,
    UfsUnavailable,
    VersionChanged,
    clean_path,
    join,
    link_stays_inside,
)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _descend(start: int, parts: list[str], own_start: bool) -> int:
    """The fd of the directory `parts` lead to from `start`, each opened without following a
    symlink; the fds opened on the way are closed, and `start` too when `own_start`."""
    fd = start
    try:
        for part in parts:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            if fd != start or own_start:
                os.close(fd)
            fd = nfd
    except BaseException:
        if fd != start or own_start:
            os.close(fd)
        raise
    return fd


def _open_root(root: str) -> int:
    """An fd of the directory `root` (absolute), reached from / without following a symlink."""
    parts = [p for p in root.split("/") if p]
    try:
        return _descend(os.open("/", _DIR_FLAGS), parts, own_start=True)
    except FileNotFoundError:
        raise UfsUnavailable(f"source directory {root} does not exist") from None
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise UfsUnavailable(
                f"cannot open source directory {root}: {e.strerror}") from None
        walked = ("/" + "/".join(parts[:i + 1]) for i in range(len(parts)))
        link = next((p for p in walked if os.path.islink(p)), None)
        if link is None:
            raise UfsUnavailable(f"source {root} is not a directory") from None
        raise UfsUnavailable(
            f"source {root}: {link} is a symlink, and eddy follows none on the way to a "
            f"source; give the directory's real path ({os.path.realpath(root)})") from None


def version_of(st: os.stat_result) -> str:
    """A version string that changes when the content may have changed."""
    return f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}"


class LocalUfs(UfsBackend):
    """A directory on this node as a source (`local://`): the engine opens one per dataset
    through `open_ufs`; tests use it as a real source."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.description = f"local://{self.root}"
        self._root_fd = _open_root(self.root)

    def _parent_fd(self, rel: str) -> tuple[int, str]:
        """An fd of the directory holding `rel` (caller closes unless it is the root fd)."""
        parts = rel.split("/")
        try:
            return _descend(self._root_fd, parts[:-1], own_start=False), parts[-1]
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", rel) from None
            raise

    def _entry(self, rel: str, st: os.stat_result, target: str | None = None) -> Entry:
        owner = {"mode": statmod.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
        if statmod.S_ISDIR(st.st_mode):
            return Entry(rel, Kind.DIR, 0, st.st_mtime_ns, version_of(st), **owner)
        if statmod.S_ISLNK(st.st_mode):
            return Entry(rel, Kind.SYMLINK, len(target or ""), st.st_mtime_ns, "", target,
                         **owner)
        return Entry(rel, Kind.FILE, st.st_size, st.st_mtime_ns, version_of(st), **owner)

    def stat(self, path: str) -> Entry:
        rel = clean_path(path)
        if not rel:
            return self._entry("", os.fstat(self._root_fd))
        fd, name = self._parent_fd(rel)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if statmod.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=fd)
                if not link_stays_inside(rel, target):
                    # A link out of the dataset is hidden: it cannot be followed safely.
                    raise FileNotFoundError(errno.ENOENT, "symlink leaves the dataset", rel)
                return self._entry(rel, st, target)
            if not (statmod.S_ISREG(st.st_mode) or statmod.S_ISDIR(st.st_mode)):
                raise FileNotFoundError(errno.ENOENT, "not a regular file or directory", rel)
            return self._entry(rel, st)
        finally:
            if fd != self._root_fd:
                os.close(fd)

    def list(self, path: str) -> list[Entry]:
        rel = clean_path(path)
        if rel:
            fd, name = self._parent_fd(rel)
            try:
                dfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", rel) from None
                raise
            finally:
                if fd != self._root_fd:
                    os.close(fd)
        else:
            dfd = os.dup(self._root_fd)
        out = []
        try:
            for name in sorted(os.listdir(dfd)):
                try:
                    out.append(self.stat(join(rel, name)))
                except (FileNotFoundError, NotADirectoryError):
                    continue  # vanished, special file, or a link leaving the root
        finally:
            os.close(dfd)
        return out

    def read(self, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        rel = clean_path(path)
        fd, name = self._parent_fd(rel)
        try:
            ffd = os.open(name, _FILE_FLAGS, dir_fd=fd)
        finally:
            if fd != self._root_fd:
                os.close(fd)
        try:
            st = os.fstat(ffd)
            if not statmod.S_ISREG(st.st_mode):
                raise FileNotFoundError(errno.ENOENT, "not a regular file any more", rel)
            if version is not None and version_of(st) != version:
                raise VersionChanged(errno.ESTALE, "file changed at the source", rel)
            data = self._pread_all(ffd, offset, length)
            if version is not None and version_of(os.fstat(ffd)) != version:
                # Changed while we read: these bytes may mix two contents.
                raise VersionChanged(errno.ESTALE, "file changed at the source", rel)
            return data
        finally:
            os.close(ffd)

    def _pread_all(self, fd: int, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`, fewer only at the end of the file."""
        chunks = []
        while length > 0:
            chunk = os.pread(fd, length, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1
