"""Small filesystems a test can break on purpose: a size-limited tmpfs, or an ext4 on a loop
device (a disk, as far as eddy can tell), remounted read-only or filled.

Mounting needs root (CAP_SYS_ADMIN); where it is refused the test is skipped with the reason.
Every mount made through `Tmpfs` is lazily unmounted by `unmount_all`, which the `tmpfs`
fixture calls at teardown.
"""

from __future__ import annotations

import os
import subprocess

import pytest


class Tmpfs:
    """Mounts small filesystems for one test and removes them all at its end."""

    def __init__(self):
        self.mounted: list[str] = []

    def mount(self, path, size: str = "1m") -> str:
        """A tmpfs of `size` at `path` (created); skips the test where mounting is refused."""
        path = str(path)
        os.makedirs(path, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                               path], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.mounted.append(path)
        return path

    def ext4(self, path, size: str = "64M") -> str:
        """An ext4 of `size` at `path` (created), on a loop device over a sparse image file
        beside it; skips the test where that cannot be made."""
        path = str(path)
        os.makedirs(path, exist_ok=True)
        image = path.rstrip("/") + ".img"
        for argv in (["truncate", "-s", size, image], ["mkfs.ext4", "-q", "-F", image],
                     ["mount", "-o", "loop", image, path]):
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode:
                pytest.skip(f"cannot make an ext4 on a loop device here: {done.stderr.strip()}")
        self.mounted.append(path)
        return path

    @staticmethod
    def remount(path, mode: str) -> None:
        """Remount `path` read-only ("ro") or writable again ("rw")."""
        subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True,
                       capture_output=True)

    def unmount_all(self) -> None:
        for path in reversed(self.mounted):
            subprocess.run(["umount", "-l", path], capture_output=True)
        self.mounted.clear()


def fill(directory, name: str = "filler") -> str:
    """Write a file into `directory` until its filesystem is full; the file's path."""
    path = os.path.join(str(directory), name)
    chunk = bytes(64 << 10)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
    with open(path, "ab", buffering=0) as f:  # the last pages a 64 KiB write could not take
        try:
            while True:
                f.write(bytes(512))
        except OSError:
            pass
    return path
