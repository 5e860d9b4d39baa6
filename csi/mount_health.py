"""What the node plugin knows of each staged volume's mount, and how it says it.

The node plugin never stats a mount to learn its health: a stat of a FUSE mount nobody serves
waits forever. It asks the mounter instead (`refresh`, twice a second from the node's watcher
and at each NodeGetVolumeStats) and adds the problems it met itself keeping a volume mounted
(an NFS export that would not mount, a target it could not bind again). Both become
NodeGetVolumeStats' volume condition, `eddy status`'s mount column and the mounts metric.
"""

from __future__ import annotations

from eddy.base import log
from eddy.base.errors import EddyError

from .mounter.mounter import Mounter
from .mounter.service import MounterClient
from .mounter.states import MountState


class MountHealth:
    """The mounter's last word on each volume's mount, plus this plugin's own problems with it.

    Owned by NodeService: it records what staging returns (`staged`, `unstaged`), the watcher
    refreshes it, and `condition` answers for volume stats and `eddy status`."""

    def __init__(self, mounter: Mounter | MounterClient):
        self.mounter = mounter
        self._states: dict[str, MountState] = {}  # the mounter's last word on each volume
        self._problems: dict[str, str] = {}  # volume id -> what went wrong keeping it mounted
        self._mounter_error = ""  # why the mounter did not answer, while it does not
        self._log = log.get("csi.node")

    def refresh(self) -> bool:
        """Ask the mounter how its mounts are; False when it does not answer."""
        try:
            self._states = {s.volume_id: s for s in self.mounter.states()}
        except EddyError as e:
            if not self._mounter_error:
                self._log.warning("mounter.unavailable", error=str(e))
            self._mounter_error = str(e)
            return False
        self._mounter_error = ""
        return True

    def state(self, volume_id: str) -> MountState | None:
        return self._states.get(volume_id)

    def staged(self, state: MountState) -> None:
        """The mounter just staged (or staged again) this volume: its state, and no problem."""
        self._states[state.volume_id] = state

    def unstaged(self, volume_id: str) -> None:
        self._states.pop(volume_id, None)
        self.problem(volume_id, None)

    def problem(self, volume_id: str, message: str | None) -> None:
        """Record what went wrong keeping the volume mounted (None: nothing any more)."""
        if message is None:
            self._problems.pop(volume_id, None)
        elif self._problems.get(volume_id) != message:
            self._problems[volume_id] = message
            self._log.warning("volume.problem", volume_id=volume_id, problem=message)

    def states(self) -> list[MountState]:
        """The mounter's last word on each mount (for metrics)."""
        return list(self._states.values())

    def condition(self, volume_id: str) -> tuple[bool, str]:
        """(abnormal, message) of a staged volume's mount, from what the mounter last said."""
        problem = self._problems.get(volume_id)
        if problem is not None:
            return True, problem
        if self._mounter_error:
            return True, f"the mounter does not answer: {self._mounter_error}"
        state = self._states.get(volume_id)
        if state is None:
            return True, "the mounter does not know this volume; it is being staged again"
        if state.abnormal:
            return True, f"mount {state.phase.value}: {state.message}"
        restarted = f" (daemon restarted {state.restarts} times)" if state.restarts else ""
        return False, f"mount daemon running{restarted}"
