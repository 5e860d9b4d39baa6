"""Mount each staged volume's FUSE connection, keep a daemon serving it, never let it go.

A running pod holds a private copy of its volume's mount (kubelet bind-mounts the target into
the container with private propagation), so mounting again on the host never reaches it: the
pod keeps the connection it started with, for its whole life. So the mounter makes the
connection outlive every process instead:

- It mounts the connection itself (csi/fuse/device.py) and keeps a copy of its /dev/fuse
  descriptor; the daemon inherits another; the node plugin, when it runs apart from the
  mounter (`eddy serve --mounter`), takes a third over the socket. The kernel keeps the
  connection while any copy is open.
- When a daemon dies, a successor resumes the same connection from its session directory
  (csi/fuse/session.py); the kernel sends again what the dead one had read and not answered.
  Failed starts are retried with backoff for as long as the volume is staged.
- A mounter that restarts finds its mounts in its records (records.py). A daemon still
  running is adopted only if it is that volume's (pid, start time, command line), and a copy
  of its descriptor is taken back from it (pidfd_getfd). Where the daemon died too, the
  node plugin hands its copy back; where no copy survived anywhere, the kernel ended the
  connection, and the volume is mounted anew: its device number changes, which tells the
  node plugin to bind its targets again (new pods see it; running ones saw their mount end).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from eddy.base import log, mounttable
from eddy.base.errors import AlreadyExists, EddyError, InvalidArgument, NotFound

from .. import daemons, mounts
from ..fuse import device
from ..state.secrets import DEFAULT_SECRETS_DIR
from .records import MountRecord, MountRecords
from .states import MountState, Phase
from .uploads import drain_uploads

TICK = 0.2  # how often daemons are checked
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0  # seconds between failed starts, doubling
RESUME_ATTEMPTS = 5  # failed resumes in a row before the connection is mounted anew
HOLDER_GRACE = 5.0  # how long a mount whose descriptor is elsewhere waits for it
ABANDON_AFTER = 60.0  # a connection nobody hands back in this long is aborted and remounted
UNMOUNT_GRACE = 2.0  # how long an unmounted volume's daemon may take to notice and exit


@dataclass(eq=False)
class _Mount:
    """One volume's mount, guarded by `lock` (the supervisor skips a mount that is busy)."""

    record: MountRecord
    fd: int = -1
    daemon: daemons.MountDaemon | None = None
    phase: Phase = Phase.RESTARTING
    message: str = ""
    restarts: int = 0
    failures: int = 0  # failed starts in a row
    next_try: float = 0.0
    waiting_since: float | None = None
    probe: threading.Thread | None = None
    probe_result: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Mounter:
    """The node's mounts and their daemons.

    `others_hold` says whether another process (the node plugin, over the mounter's socket)
    may hold copies of the descriptors: then a mount whose copy is lost here waits a moment
    for it before it is given up.

    Example::

        mounter = Mounter("/var/lib/eddy/mounter")
        mounter.start()
        state = mounter.stage(DaemonConfig(volume_id, staging_path, parameters, secrets))
        ...
        mounter.unstage(volume_id)
        mounter.close()  # the daemons keep serving
    """

    def __init__(self, state_dir: str, *, others_hold: bool = True,
                 start_daemon: Callable[[daemons.DaemonConfig], daemons.MountDaemon] =
                 daemons.start,
                 mount: Callable[..., tuple[int, str]] = device.mount,
                 clock: Callable[[], float] = time.monotonic,
                 secrets_dir: str = DEFAULT_SECRETS_DIR):
        self._records = MountRecords(state_dir, secrets_dir)
        self._others_hold = others_hold
        self._start_daemon = start_daemon
        self._mount = mount
        self._clock = clock
        self._mounts: dict[str, _Mount] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="mounter", daemon=True)
        self.problems: list[str] = []  # records that could not be read at start
        self._log = log.get("csi.mounter")

    # -- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Take over the mounts in the records, then watch them all."""
        records, self.problems = self._records.load_all()
        for problem in self.problems:
            self._log.error("mount_record.unreadable", problem=problem)
        for record in records:
            m = _Mount(record)
            daemon = daemons.MountDaemon.adopt(self._config(record, {}), record.pid,
                                               record.pid_start)
            if daemon is not None:
                m.daemon, m.phase = daemon, Phase.SERVING
                m.fd = daemons.take_descriptor(record.pid, record.fd)
                self._log.info("mount_daemon.adopted", volume_id=record.volume_id,
                               pid=record.pid, descriptor=m.fd >= 0)
            self._mounts[record.volume_id] = m
        self._thread.start()

    def close(self) -> None:
        """Stop watching; the daemons keep serving, the connections stay mounted."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            for m in self._mounts.values():
                if m.fd >= 0:
                    os.close(m.fd)
                    m.fd = -1

    # -- what the node plugin asks -------------------------------------------------------

    def stage(self, config: daemons.DaemonConfig) -> MountState:
        """Mount the volume and start its daemon; return once it answers (idempotent)."""
        with self._lock:
            m = self._mounts.get(config.volume_id)
            new = m is None
            if new:
                m = self._mounts[config.volume_id] = _Mount(MountRecord(
                    config.volume_id, config.mountpoint, dict(config.parameters),
                    dict(config.engine), config.log_level, writable=config.writable))
        with m.lock:
            if not new:
                if (m.record.mountpoint, m.record.parameters, m.record.writable) != (
                        config.mountpoint, config.parameters, config.writable):
                    raise AlreadyExists(f"volume {config.volume_id} is already mounted at "
                                        f"{m.record.mountpoint} with other parameters")
                return self._state(m)
            try:
                self._mount_new(m, config.secrets)
            except BaseException:
                with self._lock:
                    del self._mounts[config.volume_id]
                self._release(m)
                raise
            return self._state(m)

    def unstage(self, volume_id: str) -> None:
        """Unmount the volume, stop its daemon, forget it (nothing to do if unknown). What a
        writer staged for S3 is uploaded first; while S3 refuses it, the volume stays and
        this raises Unavailable naming it (kubelet retries the unstage)."""
        with self._lock:
            m = self._mounts.get(volume_id)
        if m is not None and m.record.writable:
            with m.lock:
                drain_uploads(m.record.parameters, self._records.secrets(volume_id),
                              self._records.uploads_dir(volume_id))
        with self._lock:
            m = self._mounts.pop(volume_id, None)
        if m is not None:
            with m.lock:
                self._release(m)
            self._log.info("mount.removed", volume_id=volume_id)

    def states(self) -> list[MountState]:
        with self._lock:
            return [self._state(m) for m in self._mounts.values()]

    def descriptor(self, volume_id: str) -> tuple[int, str]:
        """A new copy of the volume's descriptor and the device it belongs to."""
        m = self._get(volume_id)
        with m.lock:
            if m.fd < 0:
                raise NotFound(f"the mounter holds no descriptor of volume {volume_id}")
            return os.dup(m.fd), m.record.device

    def hold(self, volume_id: str, fd: int, device_id: str) -> None:
        """Take a copy of the volume's descriptor from its other holder (owns `fd`)."""
        try:
            m = self._get(volume_id)
            if not device.is_fuse_device(fd):
                raise InvalidArgument(f"descriptor for volume {volume_id} is not /dev/fuse")
        except BaseException:
            os.close(fd)
            raise
        with m.lock:
            if m.fd >= 0 or device_id != m.record.device:
                os.close(fd)  # one copy is enough; one of an older connection is no use
                return
            m.fd, m.waiting_since = fd, None
            self._log.info("mount.descriptor_returned", volume_id=volume_id)
        self._wake.set()

    def _get(self, volume_id: str) -> _Mount:
        with self._lock:
            m = self._mounts.get(volume_id)
        if m is None:
            raise NotFound(f"volume {volume_id} is not mounted by this mounter")
        return m

    @staticmethod
    def _state(m: _Mount) -> MountState:
        return MountState(m.record.volume_id, m.record.mountpoint, m.record.device,
                          m.record.pid if m.daemon else 0, m.phase, m.message, m.restarts,
                          m.fd >= 0)

    # -- mounting and starting; the caller holds the mount's lock ------------------------

    def _config(self, record: MountRecord, secrets: dict[str, str] | None,
                session_fd: int = -1) -> daemons.DaemonConfig:
        return daemons.DaemonConfig(
            record.volume_id, record.mountpoint, record.parameters,
            self._records.secrets(record.volume_id) if secrets is None else secrets,
            record.log_level, engine=record.engine, session_fd=session_fd,
            session_dir=self._records.session_dir(record.volume_id) if session_fd >= 0 else "",
            writable=record.writable,
            uploads_dir=self._records.uploads_dir(record.volume_id) if record.writable else "")

    def _mount_new(self, m: _Mount, secrets: dict[str, str] | None) -> None:
        """A new connection at the mountpoint, with a fresh session and daemon."""
        record = m.record
        self._close(m)
        mounts.unmount_all(record.mountpoint)  # a stale mount, or the connection given up
        os.makedirs(record.mountpoint, exist_ok=True)
        m.fd, record.device = self._mount(record.mountpoint, record.volume_id,
                                          writable=record.writable)
        self._records.session_dir(record.volume_id, fresh=True)
        self._records.save(record, secrets)  # from here a restarted mounter knows it
        self._start(m, secrets)

    def _start(self, m: _Mount, secrets: dict[str, str] | None = None) -> None:
        """Start a daemon on the mount's connection (it resumes one that was served)."""
        daemon = self._start_daemon(self._config(m.record, secrets, m.fd))
        m.daemon = daemon
        m.record.pid, m.record.pid_start, m.record.fd = daemon.pid, daemon.started, m.fd
        self._records.save(m.record)
        m.phase, m.message, m.failures, m.waiting_since = Phase.SERVING, "", 0, None

    def _release(self, m: _Mount) -> None:
        mounts.unmount_all(m.record.mountpoint)
        if m.daemon is not None:
            m.daemon.stop(grace=UNMOUNT_GRACE)  # it ends by itself when the mount was its last
            m.daemon = None
        self._close(m)
        self._records.remove(m.record.volume_id)

    @staticmethod
    def _close(m: _Mount) -> None:
        if m.fd >= 0:
            os.close(m.fd)
            m.fd = -1

    # -- supervision ---------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TICK)
            self._wake.clear()
            with self._lock:
                mounts_now = list(self._mounts.values())
            for m in mounts_now:
                if self._stop.is_set() or not m.lock.acquire(blocking=False):
                    continue
                try:
                    with self._lock:
                        staged = self._mounts.get(m.record.volume_id) is m
                    if staged:
                        self._check(m)
                except Exception:  # noqa: BLE001 - one mount's trouble never stops the rest
                    self._log.exception("mount.check_failed", volume_id=m.record.volume_id)
                finally:
                    m.lock.release()

    def _check(self, m: _Mount) -> None:
        now = self._clock()
        volume_id = m.record.volume_id
        if m.daemon is not None:
            if m.daemon.alive():
                return
            self._log.warning("mount_daemon.died", volume_id=volume_id, pid=m.daemon.pid,
                              status=m.daemon.exit_status)
            m.phase = Phase.RESTARTING
            m.message = f"mount daemon {m.daemon.pid} exited; starting another"
            m.daemon, m.next_try = None, now
        if now < m.next_try:
            return
        try:
            if m.fd < 0:
                if not self._descriptor_lost(m, now):
                    return
                self._remount(m, "no process held the connection any more")
            elif not device.connected(m.fd):
                self._remount(m, "the connection was unmounted or aborted")
            elif m.failures >= RESUME_ATTEMPTS:
                self._remount(m, f"{m.failures} daemons in a row failed to resume it")
            elif not self._records.resumable(volume_id):
                self._remount(m, "its FUSE_INIT was not kept (a pyfuse3 that cannot resume)")
            else:
                self._start(m)
                self._log.info("mount_daemon.resumed", volume_id=volume_id, pid=m.daemon.pid)
            m.restarts += 1
        except (EddyError, OSError) as e:
            m.failures += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (m.failures - 1))
            m.next_try = now + delay
            m.phase = Phase.RESTARTING
            m.message = (f"starting a mount daemon failed ({m.failures} in a row; next try in "
                         f"{delay:.1f} s): {e}")
            self._log.warning("mount_daemon.start_failed", volume_id=volume_id,
                              failures=m.failures, retry_in=delay, error=str(e))

    def _remount(self, m: _Mount, why: str) -> None:
        """Give the old connection up and mount a new one (pods that held it see it end)."""
        self._log.warning("mount.remounting", volume_id=m.record.volume_id, reason=why,
                          old_device=m.record.device)
        self._mount_new(m, None)

    def _descriptor_lost(self, m: _Mount, now: float) -> bool:
        """With no copy of the descriptor here: whether the connection is gone for good."""
        if m.waiting_since is None:
            m.waiting_since = now
            m.phase = Phase.WAITING
            m.message = "waiting for another holder to hand back the connection's descriptor"
        waited = now - m.waiting_since
        if self._others_hold and waited < HOLDER_GRACE:
            return False
        answer = self._probe(m)
        if answer == "dead":
            return True
        if waited >= ABANDON_AFTER:
            _abort(m.record.device)
            return True
        m.next_try = now + 1.0
        return False

    @staticmethod
    def _probe(m: _Mount) -> str:
        """"dead" (nothing mounted, or the kernel ended the connection), "answering", or
        "unserved" (someone holds it, nobody serves it: a statfs waits, so it runs aside)."""
        if not device.device_of(m.record.mountpoint):
            return "dead"
        if m.probe is None or (not m.probe.is_alive() and m.probe_result):
            m.probe_result = []
            result = m.probe_result

            def look() -> None:  # statfs always asks the daemon: no cached answer
                try:
                    os.statvfs(m.record.mountpoint)
                    result.append("answering")
                except OSError as e:
                    result.append("dead" if e.errno == errno.ENOTCONN else "answering")

            m.probe = threading.Thread(target=look, name="mount-probe", daemon=True)
            m.probe.start()
            m.probe.join(1.0)
        return m.probe_result[0] if m.probe_result else "unserved"


def _abort(device_id: str) -> None:
    """End a connection through the FUSE control filesystem (mounted here if it is not)."""
    major, _, minor = device_id.partition(":")
    control = "/sys/fs/fuse/connections"
    if not os.listdir(control):
        with contextlib.suppress(OSError):  # then the write below says what is wrong
            mounttable.mount("fusectl", control, "fusectl", 0)
    path = os.path.join(control, str((int(major) << 20) | int(minor)), "abort")
    with open(path, "w") as f:
        f.write("1")
