"""One engine per state directory: a second one would reconcile the index under the first's feet.

The lock is an flock on `engine.lock` in the directory, so it ends with the process however
the process ends; `eddy mount` and a node plugin given the same `--state-dir` fail fast with
`StateDirBusy` instead.
"""

from __future__ import annotations

import fcntl
import os

from .types import StateDirBusy


class StateDirLock:
    """Holds the state directory's lock from construction to `release`; the engine owns one."""

    def __init__(self, state_dir: str):
        fd = os.open(os.path.join(state_dir, "engine.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirBusy(f"another cache engine is using {state_dir}") from None
        self._fd = fd

    def release(self) -> None:
        os.close(self._fd)
