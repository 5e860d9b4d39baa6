"""The node's record of staged volumes and their published targets, kept crash-safe on disk.

One JSON file per staged volume under `<state-dir>/node/`, written by temp file + fsync +
rename, so a node plugin that restarts (or is killed) knows which mounts are its own, which
daemons to re-adopt, and which targets to re-bind. Secrets, when a volume has them, are kept
apart on tmpfs (secrets.py), so a volume can be staged again after the plugin itself
restarted without a secret ever reaching a disk; they are removed at unstage.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from urllib.parse import quote

from .files import read_record, write_json
from .secrets import DEFAULT_SECRETS_DIR, SecretStore

MAX_PLAIN_NAME = 200  # longer encodings are hashed: a file name holds at most 255 bytes


def file_name(volume_id: str) -> str:
    """The record's file name stem: a different one for every volume id, none with a `/`.

    Ids are percent-encoded (`a/b` -> `v-a%2Fb`, `a_b` -> `v-a_b`); one whose encoding is too
    long for a file name is named by its SHA-256 (`h-...`), which no encoded id can look like."""
    plain = "v-" + quote(volume_id, safe="")
    if len(plain) <= MAX_PLAIN_NAME:
        return plain
    return "h-" + hashlib.sha256(volume_id.encode()).hexdigest()


@dataclass
class StagedVolume:
    """The node's record of one staged volume: where it is staged, the parameters it was staged
    with, its published targets and the FUSE connection (device) they are bound to."""

    volume_id: str
    staging_path: str
    parameters: dict[str, str]
    targets: dict[str, bool] = field(default_factory=dict)  # target path -> read-only
    pid: int = 0  # its mount daemon's, as the mounter last said (for people reading this)
    ephemeral: bool = False  # an inline volume: staged by NodePublish, unstaged by NodeUnpublish
    device: str = ""  # "major:minor" of the FUSE connection the targets are bound to
    writable: bool = False  # mounted read-write (`validate.writable`)


class StagingRecords:
    """The node's staged volumes on disk: one JSON file per volume under <state-dir>/node, written
    with a temp file and rename. NodeService reads them at start (to carry on after a restart)
    and writes one at each stage, publish and unpublish."""

    def __init__(self, state_dir: str, secrets_dir: str = DEFAULT_SECRETS_DIR):
        self.dir = os.path.join(state_dir, "node")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._secrets = SecretStore(self.dir, secrets_dir)

    def _path(self, volume_id: str, suffix: str) -> str:
        return os.path.join(self.dir, file_name(volume_id) + suffix)

    def save(self, volume: StagedVolume, secrets: dict[str, str] | None = None) -> None:
        if secrets:
            self._secrets.save(file_name(volume.volume_id), secrets)
        write_json(self._path(volume.volume_id, ".json"), asdict(volume))

    def secrets(self, volume_id: str) -> dict[str, str]:
        return self._secrets.load(file_name(volume_id))

    def remove(self, volume_id: str) -> None:
        self._secrets.remove(file_name(volume_id))
        try:
            os.unlink(self._path(volume_id, ".json"))
        except FileNotFoundError:
            pass

    def load_all(self) -> tuple[list[StagedVolume], list[str]]:
        """Every readable record, and one line for each that is not (moved aside)."""
        out, problems = [], []
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if name.endswith(".tmp"):
                os.unlink(path)  # torn write from a crash
            elif name.endswith(".secrets") and os.path.exists(path) \
                    and not os.path.exists(path[:-len(".secrets")] + ".json"):
                os.unlink(path)  # an older eddy's secrets of a volume no longer staged
            elif name.endswith(".json"):
                vol = read_record(path, StagedVolume, "staging record", problems)
                if vol is not None:
                    self._rename_to_encoding(vol.volume_id, name)
                    out.append(vol)
        return out, problems

    def _rename_to_encoding(self, volume_id: str, name: str) -> None:
        """A record an older eddy wrote moves to its current name, and the secrets it kept on
        disk beside it move to tmpfs, so that unstaging removes both."""
        stem = name[:-len(".json")]
        self._secrets.adopt(file_name(volume_id), os.path.join(self.dir, stem + ".secrets"))
        if stem != file_name(volume_id):
            os.replace(os.path.join(self.dir, name), self._path(volume_id, ".json"))
