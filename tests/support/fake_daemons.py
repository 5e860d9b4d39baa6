"""A mount and mount daemons that only count, for the mounter's own rules; a mounter that only
records, for the node service's."""

from __future__ import annotations

import os

from csi.daemons import DaemonConfig, MountDaemon
from csi.mounter.states import MountState, Phase
from eddy.base.errors import Unavailable


class FakeDaemon(MountDaemon):
    def __init__(self, config: DaemonConfig, pid: int):
        super().__init__(config, pid, started=1)
        self.running = True

    def alive(self) -> bool:
        return self.running

    def stop(self, timeout: float = 10.0, grace: float = 0.0) -> None:
        self.running = False


class Fakes:
    """A mount that is a pipe (always "connected") and daemons that start or fail on cue."""

    def __init__(self):
        self.fail_next = 0  # starts that fail before the next one succeeds
        self.started: list[FakeDaemon] = []
        self.mounted: list[str] = []
        self._pipes: list[int] = []

    def mount(self, mountpoint: str, volume_id: str, writable: bool = False) -> tuple[int, str]:
        r, w = os.pipe()
        self._pipes.append(w)
        self.mounted.append(mountpoint)
        return r, f"0:{100 + len(self.mounted)}"

    def start(self, config: DaemonConfig) -> FakeDaemon:
        if self.fail_next:
            self.fail_next -= 1
            raise Unavailable("the source said no")
        if config.session_dir:  # as a real daemon keeps the connection's FUSE_INIT
            with open(os.path.join(config.session_dir, "init"), "wb") as f:
                f.write(b"INIT")
        daemon = FakeDaemon(config, 10_000 + len(self.started))
        self.started.append(daemon)
        return daemon

    def close(self) -> None:
        for fd in self._pipes:
            os.close(fd)


def config(tmp_path, volume_id="v1", **parameters) -> DaemonConfig:
    return DaemonConfig(volume_id, str(tmp_path / "mnt" / volume_id),
                        {"source": "local:///data", **parameters}, {"token": "s3cr3t"})


class FakeMounter:
    """Records what each mount daemon would read; nothing is mounted, no daemon runs."""

    def __init__(self):
        self.sources: list[str] = []
        self.mounts: dict[str, MountState] = {}

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def stage(self, config: DaemonConfig) -> MountState:
        self.sources.append(config.parameters["source"])
        state = MountState(config.volume_id, config.mountpoint, "0:1", 0, Phase.SERVING, "",
                           0, True)
        self.mounts[config.volume_id] = state
        return state

    def unstage(self, volume_id: str) -> None:
        self.mounts.pop(volume_id, None)

    def states(self) -> list[MountState]:
        return list(self.mounts.values())
