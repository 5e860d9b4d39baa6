"""The node's record of staged volumes and their published targets, kept crash-safe on disk.

One JSON file per staged volume under `<state-dir>/node/`, written by temp file + fsync +
rename, so a node plugin that restarts (or is killed) knows which mounts are its own, which
daemons to re-adopt, and which targets to re-bind. Secrets, when a volume has them, sit in a
separate 0600 file beside it (the directory is 0700) so a daemon can be restarted after the
plugin itself restarted; they are removed at unstage.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field


@dataclass
class StagedVolume:
    volume_id: str
    staging_path: str
    parameters: dict[str, str]
    targets: dict[str, bool] = field(default_factory=dict)  # target path -> read-only
    pid: int = 0
    ephemeral: bool = False  # an inline volume: staged by NodePublish, unstaged by NodeUnpublish


class StagingRecords:
    def __init__(self, state_dir: str):
        self.dir = os.path.join(state_dir, "node")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def _path(self, volume_id: str, suffix: str) -> str:
        # Volume ids come from the controller; keep them from naming paths outside the dir.
        safe = volume_id.replace("/", "_").replace("\0", "_")
        return os.path.join(self.dir, f"{safe}{suffix}")

    def _write(self, path: str, data: dict) -> None:
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def save(self, volume: StagedVolume, secrets: dict[str, str] | None = None) -> None:
        if secrets:
            self._write(self._path(volume.volume_id, ".secrets"), secrets)
        self._write(self._path(volume.volume_id, ".json"), asdict(volume))

    def secrets(self, volume_id: str) -> dict[str, str]:
        try:
            with open(self._path(volume_id, ".secrets")) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def remove(self, volume_id: str) -> None:
        for suffix in (".json", ".secrets"):
            try:
                os.unlink(self._path(volume_id, suffix))
            except FileNotFoundError:
                pass

    def load_all(self) -> list[StagedVolume]:
        out = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(self.dir, name))  # torn write from a crash
            elif name.endswith(".json"):
                with open(os.path.join(self.dir, name)) as f:
                    out.append(StagedVolume(**json.load(f)))
        return out
