"""Staged files on the node's disk: what a pod wrote to an s3:// volume until S3 has it.

Each file being written is `<id>.data` (its bytes) and `<id>.json` (its manifest: bucket, key,
size, whether S3 already holds these bytes) in a staging directory the caller owns, one per
volume. The manifest is replaced atomically (temp file, fsync, rename, directory fsync), so a
daemon killed at any instant leaves either the old or the new one. A staged file that S3 does
not hold yet is *pending*: a restarted daemon finds it with `pending()` and uploads it.

Whoever has a staged file open holds an exclusive `flock` on its data file; the lock dies with
the process, so `claim()` tells a live writer's file (skip it) from a dead one's (take it over).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, replace

from eddy.base import mounttable

DIRTY = "dirty"  # S3 does not hold these bytes yet: upload before dropping
CLEAN = "clean"  # S3 holds these bytes (or the file was only read): safe to drop


@dataclass(frozen=True)
class Manifest:
    """What a staged file is for; written beside its data file."""

    id: str  # the two file names: <id>.data and <id>.json
    bucket: str
    key: str  # the full S3 key (prefix included)
    path: str  # the dataset-relative path the FUSE layer knows it by
    size: int  # the data file's size when the manifest was written (the file itself wins)
    state: str  # DIRTY or CLEAN
    created_ns: int
    attempts: int = 0  # failed uploads so far
    error: str = ""  # why the last upload failed
    etag: str = ""  # the object's ETag after the last upload


class StagingDir:
    """One volume's staging directory; refuses a directory held in RAM (a restart loses it)."""

    def __init__(self, path: str | os.PathLike, *, allow_memory: bool = False):
        self.path = os.fspath(path)
        if not allow_memory and mounttable.in_memory(self.path):
            raise ValueError(
                f"staging directory {self.path} is on tmpfs: staged uploads must survive a "
                "restart, give a directory on the node's disk"
            )
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def data_path(self, manifest: Manifest) -> str:
        return os.path.join(self.path, f"{manifest.id}.data")

    def create(self, bucket: str, key: str, path: str, state: str) -> tuple[Manifest, int]:
        """A new, empty staged file, locked and open read-write, and its saved manifest."""
        manifest = Manifest(uuid.uuid4().hex, bucket, key, path, 0, state, time.time_ns())
        final = self.data_path(manifest)
        # Locked under a name no scan takes for an orphan, then renamed: never unlocked.
        fd = os.open(f"{final}.new", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(f"{final}.new", final)
        self.save(manifest)
        return manifest, fd

    def save(self, manifest: Manifest) -> None:
        """Replace the manifest atomically (temp, fsync, rename, directory fsync)."""
        final = os.path.join(self.path, f"{manifest.id}.json")
        tmp = f"{final}.tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(manifest), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self._sync_dir()

    def remove(self, manifest: Manifest) -> None:
        """Drop the manifest, then the data file (a crash between leaves an orphan data file,
        which `manifests()` removes)."""
        for name in (f"{manifest.id}.json", f"{manifest.id}.data"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, name))
        self._sync_dir()

    def manifests(self) -> list[Manifest]:
        """Every readable manifest, oldest first; data files without one are removed."""
        found: list[Manifest] = []
        names = set(os.listdir(self.path))
        for name in names:
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.path, name)) as f:
                    found.append(Manifest(**json.load(f)))
            except (OSError, ValueError, TypeError):
                continue  # torn by a crash before rename cannot happen; foreign: leave it
        ids = {m.id for m in found}
        for name in names:  # left by a crash in create() or remove(): no manifest names it
            if name.endswith(".data.new") or (name.endswith(".data") and name[:-5] not in ids):
                self._remove_orphan(os.path.join(self.path, name))
        return sorted(found, key=lambda m: m.created_ns)

    def pending(self) -> list[Manifest]:
        """Staged files whose bytes S3 does not hold yet, oldest first."""
        return [m for m in self.manifests() if m.state == DIRTY]

    def claim(self, manifest: Manifest) -> int | None:
        """Open and lock the data file of a staged file nobody holds; None if a live writer
        holds it (or it is gone)."""
        try:
            fd = os.open(self.data_path(manifest), os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def failed(self, manifest: Manifest, size: int, error: str) -> Manifest:
        """Record a failed upload (the data stays for a retry)."""
        updated = replace(manifest, size=size, state=DIRTY, attempts=manifest.attempts + 1,
                          error=error)
        self.save(updated)
        return updated

    def _remove_orphan(self, data_path: str) -> None:
        """Unlink a data file without a manifest unless a live writer holds it (one being
        created holds its lock before its manifest exists)."""
        try:
            fd = os.open(data_path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(data_path)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)

    def _sync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
