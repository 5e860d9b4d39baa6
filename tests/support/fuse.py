"""What the tests that mount a real FUSE filesystem share: whether they can run here, and
how to read through a mount as another user."""

from __future__ import annotations

import os
import shutil
import subprocess


def fuse_problem() -> str | None:
    """Why a FUSE mount cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (allow_other FUSE mounts)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"/dev/fuse is not usable: {e.strerror}"
    return None


def run_as(uid: int, gid: int, argv: list[str], cwd: str | os.PathLike,
           groups: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    """Run `argv` in `cwd` as `uid`:`gid` with only `groups` as supplementary groups, as a
    pod's process would. The directory is entered as root first, so paths relative to it
    reach a mount whatever its parents' modes are (pytest's tmp dirs are 0700)."""
    group_args = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", *group_args, *argv],
                          cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
