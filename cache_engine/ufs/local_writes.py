"""Writes into a directory source (`local://`, a hostPath or NFS claim) for a writer-mode volume.

A mount daemon of a volume staged with a writer access mode changes the source directory
straight through: what a pod writes is in the source the moment its write(2) returns. Every
path is reached as `LocalUfs` reaches it, component by component from the root's fd without
following a symlink, so no write can land outside the dataset; the last component is never
followed either (O_NOFOLLOW, the *at() calls' own rules), and a symlink may only be created
pointing inside the dataset. New files, directories and links belong to the uid and gid of the
process that made them (the kernel has already checked its permission, `default_permissions`).

    writer = LocalWriter(LocalUfs("/srv/data"))
    f = writer.open("out/ckpt.bin", os.O_WRONLY | os.O_CREAT, 0o644, (1000, 1000))
    f.write(b"...", 0); f.close()
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat as statmod
from collections.abc import Iterator

from .base import Entry, clean_path, link_stays_inside
from .local import LocalUfs

RENAME_NOREPLACE = 1  # renameat2(2) flags, as FUSE passes them
RENAME_EXCHANGE = 2
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # never a link, never a FIFO's wait
_OPEN_FLAGS = os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_EXCL | os.O_CREAT
_libc = ctypes.CDLL(None, use_errno=True)


class LocalFile:
    """A file of the source open for a writer (or for a reader while it is written): what the
    mount's handle does with it. Calls block; the mount runs them in worker threads."""

    def __init__(self, fd: int, path: str, ufs: LocalUfs):
        self.fd = fd
        self.path = path
        self._ufs = ufs

    def write(self, data: bytes, offset: int) -> int:
        return os.pwrite(self.fd, data, offset)

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def flush(self) -> None:
        """close(2) of a descriptor: a write has reached the file already, nothing is held."""

    def sync(self, datasync: bool = False) -> None:
        (os.fdatasync if datasync else os.fsync)(self.fd)

    def stat(self) -> Entry:
        """What the file is now (right after an unlink or a rename too)."""
        return self._ufs._entry(clean_path(self.path), os.fstat(self.fd))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LocalWriter:
    """Create, write, rename and remove below a `LocalUfs`'s root (see the module docstring).

    Errors are the OSErrors of the system calls (EACCES, ENOTEMPTY, EEXIST, ...), which the
    mount answers as they are; a path that leaves the root raises PermissionError."""

    def __init__(self, ufs: LocalUfs):
        self._ufs = ufs

    @contextlib.contextmanager
    def _at(self, path: str) -> Iterator[tuple[int, str]]:
        """(fd of the parent directory, last component) of `path`, which is not the root."""
        rel = clean_path(path)
        if not rel:
            raise PermissionError(errno.EPERM, "the dataset root itself cannot change", path)
        fd, name = self._ufs._parent_fd(rel)
        try:
            yield fd, name
        finally:
            if fd != self._ufs._root_fd:
                os.close(fd)

    def open(self, path: str, flags: int, mode: int = 0o644,
             owner: tuple[int, int] | None = None) -> LocalFile:
        """The regular file at `path` opened with the access, append, truncate, create and
        exclusive bits of `flags`; a file it creates gets `mode` and `owner`."""
        flags = (flags & _OPEN_FLAGS) | _FILE_FLAGS
        with self._at(path) as (dfd, name):
            created, fd = bool(flags & os.O_CREAT), -1
            try:  # made here, or there already? Only a file made here gets `owner`.
                fd = os.open(name, flags | os.O_EXCL, mode, dir_fd=dfd) if created else -1
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                created = False
            if fd < 0:
                fd = os.open(name, flags & ~os.O_CREAT, dir_fd=dfd)
        try:
            if not statmod.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            if created and owner is not None:
                os.fchown(fd, *owner)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return LocalFile(fd, path, self._ufs)

    def stat(self, path: str) -> Entry:
        """What `path` is now at the source."""
        return self._ufs.stat(path)

    def truncate(self, path: str, size: int) -> None:
        f = self.open(path, os.O_WRONLY)
        try:
            f.truncate(size)
        finally:
            f.close()

    def mkdir(self, path: str, mode: int, owner: tuple[int, int] | None = None) -> None:
        with self._at(path) as (dfd, name):
            os.mkdir(name, mode, dir_fd=dfd)
            if owner is not None:
                os.chown(name, *owner, dir_fd=dfd, follow_symlinks=False)

    def symlink(self, path: str, target: str, owner: tuple[int, int] | None = None) -> None:
        if not link_stays_inside(clean_path(path), target):
            raise PermissionError(errno.EPERM, f"a link to {target!r} would leave the dataset",
                                  path)
        with self._at(path) as (dfd, name):
            os.symlink(target, name, dir_fd=dfd)
            if owner is not None:
                os.chown(name, *owner, dir_fd=dfd, follow_symlinks=False)

    def unlink(self, path: str) -> None:
        with self._at(path) as (dfd, name):
            os.unlink(name, dir_fd=dfd)

    def rmdir(self, path: str) -> None:
        with self._at(path) as (dfd, name):
            os.rmdir(name, dir_fd=dfd)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """renameat2(2) of `old` to `new` (RENAME_NOREPLACE and RENAME_EXCHANGE as asked)."""
        with self._at(old) as (odfd, oname), self._at(new) as (ndfd, nname):
            if _libc.renameat2(odfd, os.fsencode(oname), ndfd, os.fsencode(nname), flags):
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), old)

    def chmod(self, path: str, mode: int) -> None:
        with self._at(path) as (dfd, name):
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if statmod.S_ISLNK(os.fstat(fd).st_mode):
                raise OSError(errno.EOPNOTSUPP, "a symlink has no mode of its own", path)
            os.chmod(f"/proc/self/fd/{fd}", mode)  # fchmod(2) refuses O_PATH fds
        finally:
            os.close(fd)

    def chown(self, path: str, uid: int, gid: int) -> None:
        """-1 keeps the uid or the gid."""
        with self._at(path) as (dfd, name):
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)

    def utime(self, path: str, atime_ns: int | None, mtime_ns: int | None) -> None:
        """Set the access and modification times; None keeps one as it is."""
        with self._at(path) as (dfd, name):
            if atime_ns is None or mtime_ns is None:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                atime_ns = st.st_atime_ns if atime_ns is None else atime_ns
                mtime_ns = st.st_mtime_ns if mtime_ns is None else mtime_ns
            os.utime(name, ns=(atime_ns, mtime_ns), dir_fd=dfd, follow_symlinks=False)
