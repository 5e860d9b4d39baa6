"""What the mounter says of each volume's mount: the words its socket, the node plugin's volume
conditions, `eddy status` and the mounts metric share (no process state here, only values)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class Phase(str, Enum):
    """Where a staged volume's mount stands, as the mounter sees it (shown in volume conditions,
    `eddy status` and the `eddy_mounts{phase}` metric)."""

    SERVING = "serving"  # a daemon serves the connection
    RESTARTING = "restarting"  # its daemon died: a successor is being started
    WAITING = "waiting"  # no copy of the descriptor here: waiting for the node plugin's


@dataclass(frozen=True)
class MountState:
    """One volume's mount as the mounter sees it (what NodeGetVolumeStats and status show)."""

    volume_id: str
    mountpoint: str
    device: str  # "major:minor" of the connection: a new one means the targets must be re-bound
    pid: int
    phase: Phase
    message: str
    restarts: int  # daemons started after the first (resumed or mounted anew)
    held: bool  # the mounter holds a copy of the connection's descriptor

    @property
    def abnormal(self) -> bool:
        return self.phase is not Phase.SERVING

    def to_dict(self) -> dict:
        return {**asdict(self), "phase": self.phase.value}

    @classmethod
    def from_dict(cls, data: dict) -> MountState:
        return cls(**{**data, "phase": Phase(data["phase"])})
