"""The FUSE connection as a descriptor: mount one, ask it to resend, see whether it lives.

A FUSE connection is born when a /dev/fuse descriptor is mounted, and lives as long as some
process holds that descriptor (or until it is unmounted). The mounter mounts it here and hands
copies to the mount daemon and the node plugin, so no single process takes the mount with it.
No pyfuse3 here: the mounter and the node plugin use this without loading a filesystem.
"""

from __future__ import annotations

import errno
import os
import re
import select
import stat
import struct

from eddy.base import mounttable
from eddy.base.errors import Unavailable
from eddy.base.mounttable import mount_at

MOUNT_OPTIONS = ("allow_other", "default_permissions")  # every pod's uid; the kernel checks modes
FUSE_NOTIFY_RESEND = 7  # Linux 6.9+: requests read but not answered go back to the queue


def request_timeout(sysctls: str = "/proc/sys/fs/fuse") -> float | None:
    """Seconds a new connection's requests may go unanswered before the kernel aborts it
    (Linux 6.14+ `default_request_timeout`, capped by `max_request_timeout`); None: no limit.
    """
    limits = []
    for name in ("default_request_timeout", "max_request_timeout"):
        try:
            with open(os.path.join(sysctls, name)) as f:
                limits.append(int(f.read()))
        except (OSError, ValueError):
            limits.append(0)
    default, most = limits
    timeout = min(default or most, most or default)
    return float(timeout) if timeout else None


def fsname(volume_id: str) -> str:
    """The mount's source column: the volume id, reduced to what mount options allow."""
    return "eddy:" + re.sub(r"[^A-Za-z0-9._-]", "_", volume_id)[:64]


def mount(mountpoint: str, volume_id: str, writable: bool = False) -> tuple[int, str]:
    """Mount a new FUSE connection at `mountpoint`, read-only unless `writable`: (its
    descriptor, "major:minor").

    The kernel queues FUSE_INIT at once; whoever serves the descriptor answers it. The mount
    options are the ones libfuse would pass for the daemon's own options (csi.fuse.daemon).
    """
    st = os.stat(mountpoint)
    if not stat.S_ISDIR(st.st_mode):
        raise Unavailable(f"cannot mount at {mountpoint}: not a directory")
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    options = f"fd={fd},rootmode={stat.S_IFDIR:o},user_id=0,group_id=0," + \
        ",".join(MOUNT_OPTIONS)
    try:
        mounttable.mount(fsname(volume_id), mountpoint, "fuse.eddy",
                         (0 if writable else mounttable.MS_RDONLY) | mounttable.MS_NOSUID
                         | mounttable.MS_NODEV,
                         options)
    except OSError as e:
        os.close(fd)
        raise Unavailable(f"cannot mount at {mountpoint}: {e.strerror}") from None
    return fd, device_of(mountpoint)


def device_of(mountpoint: str) -> str:
    """The "major:minor" of the topmost mount at `mountpoint` ("" if none): the connection's
    number, which a new mount changes. Read from the mount table: stat would wait for the
    daemon."""
    found = mount_at(mountpoint)
    return found.device if found is not None else ""


def notify_resend(fd: int) -> bool:
    """Ask the kernel to queue again every request a dead daemon read but did not answer.

    False where the kernel lacks FUSE_NOTIFY_RESEND (before Linux 6.9): those requests then
    wait until the mount is unmounted or their caller is killed.
    """
    try:
        os.write(fd, struct.pack("<IiQ", 16, FUSE_NOTIFY_RESEND, 0))
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise
    return True


def connected(fd: int) -> bool:
    """Whether the connection behind `fd` still lives (neither unmounted nor aborted)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR)
    return not any(ev & (select.POLLERR | select.POLLNVAL) for _, ev in poller.poll(0))


def is_fuse_device(fd: int) -> bool:
    """Whether `fd` is open on /dev/fuse (a descriptor handed over by another process)."""
    try:
        st = os.fstat(fd)
        return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.stat("/dev/fuse").st_rdev
    except OSError:
        return False
