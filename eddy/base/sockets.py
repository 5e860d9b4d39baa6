"""Unix socket endpoints: `unix:///path` names, and claiming a path a crashed server left."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator

from eddy.base.errors import InvalidArgument


def socket_path(endpoint: str) -> str:
    """The filesystem path of a `unix:///path` (or `unix:/path`, or bare path) endpoint."""
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://"):]
    elif endpoint.startswith("unix:"):
        path = endpoint[len("unix:"):]
    elif "://" in endpoint:
        raise InvalidArgument(f"endpoint {endpoint!r}: only unix:///path sockets are supported")
    else:
        path = endpoint
    if not path.startswith("/"):
        raise InvalidArgument(f"endpoint {endpoint!r}: the socket path must be absolute")
    return path


@contextlib.contextmanager
def born_private() -> Iterator[None]:
    """Sockets bound inside are created 0600 whatever the process's umask: there is no
    moment at which others may connect. (The umask is the process's: keep the block short.)"""
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)


def claim_socket_path(path: str) -> None:
    """Make `path` free to bind: remove a socket nobody listens on (left by a crash); refuse
    anything else that is there."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.lexists(path):
        return
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise InvalidArgument(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: left over from a crash
    else:
        raise InvalidArgument(f"another process already serves {path}")
    finally:
        probe.close()
