"""Start, recognise and stop the per-volume mount daemons (`python -m csi.fuse`).

A mount daemon is started in its own session, so it keeps serving its pods when whoever
started it (the mounter, `eddy mount`) exits. Parameters and secrets travel on the daemon's
stdin, never on argv (argv is world-readable in /proc), and so does the connection's session
when the mounter mounted it (its /dev/fuse descriptor is inherited). The daemon answers one
line on stdout: `READY` once the mount answers, or `ERROR <message>` before it exits.

A daemon found by pid after a restart is only taken for the volume's daemon if its command
line names that volume and it started when the record says: a pid reused by another process,
or another volume's daemon, is never signalled.
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from eddy.base.errors import Unavailable

from . import mounts

READY_TIMEOUT = 60.0
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class DaemonConfig:
    """Everything a mount daemon needs; `secrets` never leaves memory and the daemon's stdin."""

    volume_id: str
    mountpoint: str
    parameters: dict[str, str]
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    log_level: str = "info"
    log_path: str | None = None  # stderr goes here when set (detached `eddy mount`)
    engine: dict = field(default_factory=dict)  # where blocks come from (see csi/fuse/daemon.py)
    session_fd: int = -1  # the connection the mounter mounted (-1: the daemon mounts itself)
    session_dir: str = ""  # its session directory (csi/fuse/session.py)
    writable: bool = False  # mounted read-write: a writer-mode volume (csi/fuse/writes.py)
    uploads_dir: str = ""  # where a writable s3:// volume stages its uploads (on disk)


def process_start(pid: int) -> int:
    """When `pid` started, in clock ticks since boot (0 if there is no such process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return 0
    return int(fields[19])  # field 22 of stat(5); the first two end at the ")"


def is_daemon_of(pid: int, started: int, volume_id: str) -> bool:
    """Whether `pid` is the mount daemon of `volume_id` that started at `started`."""
    if pid <= 0 or process_start(pid) != started:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    name = os.fsencode(volume_id)
    wanted = [b"--volume-id", name]  # as eddy before --volume-id=ID started its daemons
    return b"csi.fuse" in argv and (b"--volume-id=" + name in argv or
                                    any(argv[i:i + 2] == wanted for i in range(len(argv))))


_SYS_PIDFD_GETFD = 438  # the same number on every architecture Linux added it to


def take_descriptor(pid: int, fd: int) -> int:
    """A copy of descriptor `fd` of process `pid` (pidfd_getfd, Linux 5.6+; needs ptrace
    rights over it, which root has), or -1 when that cannot be had."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return -1
    try:
        copy = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)
    return copy if copy >= 0 else -1


class MountDaemon:
    """One daemon process serving one mountpoint (a child, or adopted by pid after a restart)."""

    def __init__(self, config: DaemonConfig, pid: int, process: subprocess.Popen | None = None,
                 started: int = 0):
        self.config = config
        self.pid = pid
        self.started = started or process_start(pid)
        self._process = process

    @classmethod
    def adopt(cls, config: DaemonConfig, pid: int, started: int) -> MountDaemon | None:
        """The running daemon of `config`'s volume at `pid`, or None if that is not it."""
        return cls(config, pid, started=started) if is_daemon_of(
            pid, started, config.volume_id) else None

    def alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return is_daemon_of(self.pid, self.started, self.config.volume_id)

    @property
    def exit_status(self) -> int | None:
        """The exit status of a child that ended (None: running, or not our child)."""
        return None if self._process is None else self._process.poll()

    def stop(self, timeout: float = 10.0, grace: float = 0.0) -> None:
        """Ask the daemon to exit (SIGTERM), kill it if it does not; wait for it to be gone.

        A daemon that mounted by itself unmounts on SIGTERM; one serving a session leaves the
        mount to the mounter. `grace`: seconds to let it end by itself first (it does when
        its connection was just unmounted)."""
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.alive():
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.alive():
                self._signal(signal.SIGKILL)
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def _signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


def daemon_command(config: DaemonConfig) -> list[str]:
    """The daemon's argv; `--flag=value`, so that a value starting with `-` stays a value."""
    return [sys.executable, "-m", "csi.fuse", f"--mountpoint={config.mountpoint}",
            f"--volume-id={config.volume_id}", f"--log-level={config.log_level}"]


def start(config: DaemonConfig, timeout: float = READY_TIMEOUT) -> MountDaemon:
    """Start a daemon and return once its mount answers; raise Unavailable with its reason.

    A daemon that fails leaves nothing mounted if it mounted by itself; a session's mount is
    the mounter's to keep or remove.
    """
    stderr = None
    if config.log_path:
        os.makedirs(os.path.dirname(config.log_path), exist_ok=True)
        stderr = open(config.log_path, "ab")  # noqa: SIM115 - handed to the child
    request = {"parameters": config.parameters, "secrets": config.secrets,
               "engine": config.engine}
    if config.session_fd >= 0:
        request["session"] = {"fd": config.session_fd, "dir": config.session_dir}
    if config.writable:
        request["writable"] = True
        request["uploads"] = config.uploads_dir
    try:
        proc = subprocess.Popen(
            daemon_command(config), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr, start_new_session=True, close_fds=True,
            pass_fds=(config.session_fd,) if config.session_fd >= 0 else (),
        )
    finally:
        if stderr is not None:
            stderr.close()
    try:
        proc.stdin.write(json.dumps(request).encode())
        proc.stdin.close()
        line = _read_line(proc, timeout)
    except BaseException:
        _abandon(proc, config)
        raise
    finally:
        proc.stdout.close()
    if line == "READY":
        return MountDaemon(config, proc.pid, proc)
    _abandon(proc, config)
    if line.startswith("ERROR "):
        raise Unavailable(f"mounting volume {config.volume_id} failed: {line[6:]}")
    raise Unavailable(
        f"mount daemon for volume {config.volume_id} exited (status {proc.returncode}) "
        "before the mount was ready; see its log"
    )


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The daemon's first stdout line, or "" on EOF or timeout."""
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return ""
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace").strip()


def _abandon(proc: subprocess.Popen, config: DaemonConfig) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if config.session_fd < 0:
        mounts.unmount_all(config.mountpoint)
