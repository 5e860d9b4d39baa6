"""What the mounter must know about its mounts after a restart, kept on disk.

One directory per mounted volume under `<state-dir>/volumes/`, named by a hash of the volume
id (ids are chosen by others: `a/b` and `a_b` must not share a directory):

    record.json   `MountRecord`: where it is mounted, how the daemon is started, the
                  connection's device number, the daemon's pid and start time
    secrets.json  the node-stage secrets the daemon needs (0600; the directory is 0700)
    session/      the connection's session (csi/fuse/session.py), new with every mount
    uploads/      what a writable s3:// volume wrote and S3 has not taken yet

Records are written by temp file + fsync + rename. One that cannot be read is moved aside
(`record.json.broken`) and reported, never allowed to stop the mounter from starting.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass, field

from ..state.files import read_record, write_json
from ..state.secrets import DEFAULT_SECRETS_DIR, SecretStore


@dataclass
class MountRecord:
    """What the mounter keeps of one staged volume to serve it again after a restart: its
    mountpoint, parameters, engine settings, the connection's device and the daemon's
    descriptor number. Secrets are kept beside it in a file of their own (0600)."""

    volume_id: str
    mountpoint: str
    parameters: dict[str, str]
    engine: dict = field(default_factory=dict)
    log_level: str = "info"
    device: str = ""  # "major:minor" of the connection; a new mount gets a new one
    fd: int = -1  # the descriptor number the daemon inherited (to take a copy back from it)
    pid: int = 0
    pid_start: int = 0  # the daemon's start time (clock ticks), so a reused pid is not it
    writable: bool = False  # mounted read-write (a writer-mode volume)


class MountRecords:
    """The mounter's records on disk: one directory per volume (`v-<sha256>`, so ids that differ
    only in punctuation never share one) with record.json, secrets.json and the daemon's
    session directory, and the volume's secrets in a `SecretStore` on tmpfs. Written
    atomically; an unreadable record is moved aside and reported, never fatal. Only `Mounter`
    uses it."""

    def __init__(self, state_dir: str, secrets_dir: str = DEFAULT_SECRETS_DIR):
        self.dir = os.path.join(os.path.abspath(state_dir), "volumes")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._secrets = SecretStore(state_dir, secrets_dir)

    def _volume_dir(self, volume_id: str) -> str:
        return os.path.join(self.dir, _stem(volume_id))

    def session_dir(self, volume_id: str, fresh: bool = False) -> str:
        """The volume's session directory; `fresh` empties it for a new connection."""
        path = os.path.join(self._volume_dir(volume_id), "session")
        if fresh:
            shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def uploads_dir(self, volume_id: str) -> str:
        """Where a writable s3:// volume stages what S3 has not taken yet (kept until the
        volume is unstaged, which waits for it: `Mounter.unstage`)."""
        path = os.path.join(self._volume_dir(volume_id), "uploads")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def resumable(self, volume_id: str) -> bool:
        """Whether the session holds what a successor needs: the connection's INIT request."""
        return os.path.exists(os.path.join(self._volume_dir(volume_id), "session", "init"))

    def save(self, record: MountRecord, secrets: dict[str, str] | None = None) -> None:
        directory = self._volume_dir(record.volume_id)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if secrets is not None:
            self._secrets.save(_stem(record.volume_id), secrets)
        write_json(os.path.join(directory, "record.json"), asdict(record))

    def secrets(self, volume_id: str) -> dict[str, str]:
        return self._secrets.load(_stem(volume_id))

    def remove(self, volume_id: str) -> None:
        self._secrets.remove(_stem(volume_id))
        shutil.rmtree(self._volume_dir(volume_id), ignore_errors=True)

    def load_all(self) -> tuple[list[MountRecord], list[str]]:
        """Every readable record, and one line for each that is not (moved aside)."""
        records, problems = [], []
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name, "record.json")
            if os.path.exists(path):
                # Secrets an older eddy kept beside the record move to tmpfs.
                self._secrets.adopt(name, os.path.join(self.dir, name, "secrets.json"))
                record = read_record(path, MountRecord, "mount record", problems)
                if record is not None:
                    records.append(record)
        return records, problems


def _stem(volume_id: str) -> str:
    """The volume's directory name: `v-` and 32 hex digits of its id's SHA-256."""
    return "v-" + hashlib.sha256(volume_id.encode()).hexdigest()[:32]
