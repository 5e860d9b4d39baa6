"""Start, watch and stop the per-volume mount daemons (`python -m csi.fuse`).

A mount daemon is started in its own session, so it keeps serving its pods when the node plugin
restarts; the plugin re-adopts it by pid. Parameters and secrets travel on the daemon's stdin,
never on argv (argv is world-readable in /proc). The daemon answers one line on stdout:
`READY` once the mount answers, or `ERROR <message>` before it exits.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from eddy import log
from eddy.errors import Unavailable

from . import mounts

READY_TIMEOUT = 60.0


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


class MountDaemon:
    """One daemon process serving one mountpoint (a child, or adopted by pid after a restart)."""

    def __init__(self, config: DaemonConfig, pid: int, process: subprocess.Popen | None = None):
        self.config = config
        self.pid = pid
        self._process = process

    def alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            return False
        return b"csi.fuse" in cmdline  # guard against pid reuse

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the daemon to unmount and exit; kill it if it does not; leave no mount behind."""
        if self.alive():
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.alive():
                self._signal(signal.SIGKILL)
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        mounts.unmount_all(self.config.mountpoint)

    def _signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


def daemon_command(config: DaemonConfig) -> list[str]:
    return [sys.executable, "-m", "csi.fuse", "--mountpoint", config.mountpoint,
            "--volume-id", config.volume_id, "--log-level", config.log_level]


def start(config: DaemonConfig, timeout: float = READY_TIMEOUT) -> MountDaemon:
    """Start a daemon and return once its mount answers; raise Unavailable with its reason."""
    stderr = None
    if config.log_path:
        os.makedirs(os.path.dirname(config.log_path), exist_ok=True)
        stderr = open(config.log_path, "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            daemon_command(config), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr, start_new_session=True, close_fds=True,
        )
    finally:
        if stderr is not None:
            stderr.close()
    payload = json.dumps({"parameters": config.parameters, "secrets": config.secrets,
                          "engine": config.engine})
    try:
        proc.stdin.write(payload.encode())
        proc.stdin.close()
        line = _read_line(proc, timeout)
    except BaseException:
        _abandon(proc, config.mountpoint)
        raise
    finally:
        proc.stdout.close()
    if line == "READY":
        return MountDaemon(config, proc.pid, proc)
    _abandon(proc, config.mountpoint)
    if line.startswith("ERROR "):
        raise Unavailable(f"mounting volume {config.volume_id} failed: {line[6:]}")
    raise Unavailable(
        f"mount daemon for volume {config.volume_id} exited (status {proc.returncode}) "
        "before the mount was ready; see the node plugin's log"
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


def _abandon(proc: subprocess.Popen, mountpoint: str) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    mounts.unmount_all(mountpoint)


class Supervisor:
    """Watches daemons and calls `on_death(volume_id)` when one dies without being stopped."""

    def __init__(self, on_death: Callable[[str], None], interval: float = 0.5):
        self._on_death = on_death
        self._interval = interval
        self._daemons: dict[str, MountDaemon] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mount-supervisor", daemon=True)
        self.restarts = 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def watch(self, daemon: MountDaemon) -> None:
        with self._lock:
            self._daemons[daemon.config.volume_id] = daemon

    def unwatch(self, volume_id: str) -> MountDaemon | None:
        with self._lock:
            return self._daemons.pop(volume_id, None)

    def get(self, volume_id: str) -> MountDaemon | None:
        with self._lock:
            return self._daemons.get(volume_id)

    def _run(self) -> None:
        logger = log.get("csi.daemons")
        while not self._stop.wait(self._interval):
            with self._lock:
                dead = [v for v, d in self._daemons.items() if not d.alive()]
            for volume_id in dead:
                logger.warning("mount_daemon.died", volume_id=volume_id)
                try:
                    self._on_death(volume_id)
                    self.restarts += 1
                except Exception:
                    logger.exception("mount_daemon.restart_failed", volume_id=volume_id)
