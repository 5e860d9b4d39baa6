"""Node-stage secrets kept only in RAM, for as long as their volume is staged.

A mount daemon that dies must be restarted with its volume's secrets, after a restart of the
node plugin or the mounter too, so they must outlive those processes; they must not outlive
the node's mounts (kubelet stages every volume again after a reboot, with fresh secrets), and
they must never reach a disk. So they live in a directory on tmpfs, `/run/eddy/secrets` by
default (`--secrets-dir`): the host's /run is a tmpfs, and in deploy/ both the node plugin and
the mounter mount the host's /run/eddy. Where the directory is not in RAM (a host without a
tmpfs /run), eddy mounts a small tmpfs on it itself. Each store keeps its files in a
subdirectory of its own, named after its owner's state directory, so two eddy processes on one
host (or two tests) never read each other's secrets.
"""

from __future__ import annotations

import hashlib
import json
import os

from eddy.base import mounttable
from eddy.base.errors import FailedPrecondition

from .files import write_json

DEFAULT_SECRETS_DIR = "/run/eddy/secrets"
TMPFS_OPTIONS = "mode=0700,size=16m"


def ensure_in_ram(path: str) -> None:
    """Make `path` a 0700 directory held in RAM: mount a tmpfs on it if it is not."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if mounttable.in_memory(path):
        return
    try:
        mounttable.mount("tmpfs", path, "tmpfs",
                         mounttable.MS_NOSUID | mounttable.MS_NODEV | mounttable.MS_NOEXEC,
                         TMPFS_OPTIONS)
    except OSError as e:
        raise FailedPrecondition(
            f"secrets directory {path} is not on tmpfs and a tmpfs cannot be mounted there "
            f"({e.strerror}): give --secrets-dir a directory on tmpfs, such as one under "
            f"/dev/shm") from None


class SecretStore:
    """One owner's secrets by name (a volume's file stem), as 0600 JSON files on tmpfs.

    Owned by the node's StagingRecords and by the mounter's MountRecords, one store each; the
    subdirectory is the SHA-256 of the owner's state directory, so the same secrets directory
    can serve every eddy process on a host."""

    def __init__(self, owner_dir: str, root: str = DEFAULT_SECRETS_DIR):
        ensure_in_ram(root)
        owner = hashlib.sha256(os.path.abspath(owner_dir).encode()).hexdigest()[:16]
        self.dir = os.path.join(root, owner)

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.json")

    def save(self, name: str, secrets: dict[str, str]) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        write_json(self._path(name), secrets)

    def load(self, name: str) -> dict[str, str]:
        """The secrets saved under `name`; {} when there are none (or they were lost)."""
        try:
            with open(self._path(name)) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def remove(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
            os.rmdir(self.dir)  # the last one: leave nothing of this owner behind
        except OSError:  # gone already, or others remain
            pass

    def adopt(self, name: str, path: str) -> None:
        """Move secrets an older eddy kept on disk at `path` into this store."""
        try:
            with open(path) as f:
                secrets = json.load(f)
        except FileNotFoundError:
            return
        except ValueError:
            secrets = None
        if isinstance(secrets, dict):
            self.save(name, secrets)
        os.unlink(path)
