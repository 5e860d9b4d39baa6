"""What the tests that mount a real FUSE filesystem share: whether they can run here."""

from __future__ import annotations

import os
import shutil


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
