"""The per-volume mount daemon: one process, one FUSE mount, served until unmounted.

pyfuse3 allows one mount per process, so the node plugin starts one daemon per staged volume
(`python -m csi.fuse --mountpoint=PATH --volume-id=ID`). Parameters and secrets arrive as one
JSON object on stdin, never on argv, which any user can read in /proc:

    {"parameters": {...}, "secrets": {...}, "engine": {...}}

`engine` says where blocks come from: `{"endpoint": "unix:///..."}` is the node plugin's cache
engine (reads fall back to the source while it is unreachable); `{"tiers": [...],
"state_dir": DIR}` runs an engine inside this process (`eddy mount`); absent, the daemon reads
the source directly. Its `redirect_allow` is the node's --http-redirect-allow (ufs/redirects.py).

`session`, when present (`{"fd": N, "dir": DIR}`), says the mounter already mounted the
connection and passed its /dev/fuse descriptor as fd N; DIR is the connection's session
directory (session.py). A daemon that finds the connection's INIT request there resumes the
connection its dead predecessor served: the same node ids and handles, no new mount, and the
requests the predecessor had read but not answered are sent again by the kernel. Without
`session`, the daemon mounts by itself and the mount ends with it.

The daemon answers exactly one line on stdout, which its starter waits for (csi/daemons.py):

    READY              the mount is up and answered a request from this process
    ERROR <message>    startup failed (bad parameters, source unavailable, mount refused);
                       the process exits with status 2 and leaves nothing mounted

Afterwards it serves until the mount is removed from outside (`umount`; it exits 0) or until
SIGTERM/SIGINT: then a daemon that mounted by itself unmounts and exits 0, and one given a
session exits 0 leaving the connection to the descriptor's other holders, for a successor.
Logs are JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable

import pyfuse3
import structlog
import trio

from cache_engine.spec import DatasetSpec, parse_parameters, parse_secrets, prefetch_covers
from cache_engine.ufs import Kind, UfsBackend
from eddy.base import log
from eddy.base.errors import EddyError, InvalidArgument, Unavailable

from . import device
from .attributes import Permissions
from .fs import DatasetFs
from .journal import Journal
from .request import Session, read_request
from .session import SessionTable
from .sources import Sources
from .writes import WritableFs

STARTUP_EXIT = 2
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
READY_TIMEOUT = 30.0
READ_AHEAD_KB = 1024  # with 1 MiB requests, the kernel reads ahead one whole request


def mount_options(volume_id: str, writable: bool = False) -> set[str]:
    """Options for pyfuse3.init; device.mount passes the same ones to mount(2)."""
    # No max_read: pyfuse3 leaves the connection's max_read unset, and libfuse refuses a
    # mismatch. Requests are still up to 1 MiB (libfuse 3 negotiates max_pages = 256).
    return {f"fsname={device.fsname(volume_id)}", "subtype=eddy", *device.MOUNT_OPTIONS,
            *(() if writable else ("ro",))}


def prefetch_wait(spec: DatasetSpec, request_timeout: float | None) -> Callable[[str], float]:
    """Seconds an open of a file waits for its `prefetch` to load it (`prefetchWait`): none
    for a file the volume's `prefetch` does not cover, and never half the kernel's request
    timeout or more (a request older than that aborts the whole connection)."""
    seconds = spec.prefetch_wait
    if request_timeout is not None:
        seconds = min(seconds, request_timeout / 2)
    return lambda path: seconds if prefetch_covers(spec.prefetch, path) else 0.0


def pyfuse3_can_resume() -> bool:
    """Whether this pyfuse3 keeps the INIT exchange and can replay it (scripts/build-pyfuse3.sh)."""
    return hasattr(pyfuse3, "get_init_exchange")


def raise_read_ahead(dev: int, kb: int = READ_AHEAD_KB) -> bool:
    """Let the kernel read ahead `kb` on the mount (its FUSE default is 128 KiB)."""
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(kb))
    except OSError as e:
        log.get("csi.fuse").debug("read-ahead unchanged", path=path, error=str(e))
        return False
    return True


class _Session:
    """The trio side of one mount: the FUSE loop, the readiness probe, the signal handler."""

    def __init__(self, mountpoint: str, dev_before: int | None,
                 ready_callback: Callable[[], None], logger):
        self.mountpoint = mountpoint
        self.dev_before = dev_before
        self.ready_callback = ready_callback
        self.log = logger
        self.ready = False
        self.signalled = False  # stopped by SIGTERM/SIGINT, not by the mount going away
        self.failure: EddyError | None = None

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stop_on_signal)
            nursery.start_soon(self._announce_ready)
            await pyfuse3.main()  # returns on terminate() or when unmounted from outside
            nursery.cancel_scope.cancel()
        if not self.ready and self.failure is None:
            self.failure = Unavailable(
                "the mount went away before it was ready (see the daemon log)")

    async def _stop_on_signal(self) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            # Signals that came while mounting were held back (see run); deliver them now.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            stopping = False
            async for signum in signals:
                self.log.info("stopping", signal=signal.Signals(signum).name,
                              again=stopping)
                if not stopping:
                    stopping = self.signalled = True
                    if not self.ready:
                        self.failure = Unavailable(
                            "stopped by a signal before the mount was ready")
                    pyfuse3.terminate()

    async def _announce_ready(self) -> None:
        """Stat the mountpoint from a thread: it answers only once the kernel reached us."""
        try:
            with trio.fail_after(READY_TIMEOUT):
                st = await trio.to_thread.run_sync(
                    os.stat, self.mountpoint, abandon_on_cancel=True)
            if self.dev_before is not None and st.st_dev == self.dev_before:
                raise OSError(f"{self.mountpoint} shows no new filesystem after mounting")
        except (OSError, trio.TooSlowError) as e:
            reason = "timed out" if isinstance(e, trio.TooSlowError) else str(e)
            self.failure = Unavailable(f"mount at {self.mountpoint} does not answer: {reason}")
            pyfuse3.terminate()
            return
        raise_read_ahead(st.st_dev)
        self.ready = True
        self.log.info("mount ready", dev=f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
        self.ready_callback()


def _already_stopping(signum, frame) -> None:
    """A stop signal after the stop began: nothing more to do."""


def _check_source(reader: UfsBackend, uri: str) -> None:
    try:
        root = reader.stat("")
    except EddyError:
        raise
    except OSError as e:
        raise Unavailable(f"source {uri} cannot be read: {e.strerror or e}") from None
    if root.kind is not Kind.DIR:
        raise Unavailable(f"source {uri} is not a directory")


def run(mountpoint: str, volume_id: str, parameters: dict[str, str],
        secrets: dict[str, str] | None = None,
        ready_callback: Callable[[], None] = lambda: None,
        engine: dict | None = None, session: Session | None = None,
        writable: bool = False, uploads: str = "") -> None:
    """Serve the volume at `mountpoint` until unmounted or signalled.

    Without `session`, mount it first. With one, serve the connection the mounter mounted,
    resuming it when its session directory shows a predecessor served it. Startup problems
    raise an EddyError naming the problem (never a secret) before `ready_callback` runs;
    a daemon that mounted by itself then leaves nothing mounted. Returns normally on
    SIGTERM/SIGINT and when the mount is removed from outside. `writable` mounts it
    read-write, writing into its source (writes.py); an s3:// one stages what it writes in
    `uploads` (a directory on the node's disk that outlives this process).
    """
    spec = parse_parameters(parameters)
    secrets = parse_secrets(secrets or {})
    mountpoint = os.path.abspath(mountpoint)
    # A session's mountpoint is mounted already: a stat would wait for this very daemon.
    if session is None and not os.path.isdir(mountpoint):
        raise InvalidArgument(f"mountpoint {mountpoint} is not a directory")
    logger = log.get("csi.fuse", volume_id=volume_id, source=spec.source.shown)
    journal = session.journal() if session is not None else Journal(None)
    resume_init = journal.init_request()
    if resume_init is not None and not pyfuse3_can_resume():
        raise Unavailable("this pyfuse3 cannot resume a mount whose daemon died "
                          "(scripts/build-pyfuse3.sh builds one that can)")
    table = SessionTable.resume(journal) if resume_init else SessionTable(journal)
    opened = Sources(spec, secrets, engine, volume_id, uploads)
    try:
        if resume_init is None:  # a resumed mount serves what it can, whatever the source
            _check_source(opened.backend, spec.source.shown)
        on_init = None
        if session is not None and pyfuse3_can_resume() and resume_init is None:
            def on_init() -> None:  # before the INIT is answered: a successor needs it
                journal.save_init(pyfuse3.get_init_exchange()[0],
                                  {"direct_io_mmap": fs.direct_io_mmap})
        options = {"table": table, "on_init": on_init, "permissions": Permissions.of(spec),
                   "cold_direct_io": spec.direct_io == "cold",
                   "prefetch_wait": prefetch_wait(spec, device.request_timeout())}
        fs = WritableFs(opened.backend, spec.metadata_ttl, writer=opened.writer(), **options) \
            if writable else DatasetFs(opened.backend, spec.metadata_ttl, **options)
        target = mountpoint if session is None else f"/dev/fd/{session.fd}"
        dev_before = os.stat(mountpoint).st_dev if session is None else None
        # From mounting until the signal receiver runs, a SIGTERM would kill the process and
        # leave a dead mount ("transport endpoint is not connected"): hold signals back.
        # Signals trio hands back unconsumed on shutdown land in a no-op handler, not the
        # default one that would kill the process before it unmounts.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        old_handlers = {sig: signal.signal(sig, _already_stopping) for sig in STOP_SIGNALS}
        try:
            try:
                pyfuse3.init(fs, target, mount_options(volume_id, writable),
                             **({"resume_init": resume_init} if resume_init else {}))
            except RuntimeError as e:
                raise Unavailable(
                    f"cannot mount at {mountpoint}: {e} (is /dev/fuse usable?)") from None
            if resume_init:  # the replayed INIT says what this build asks; the kernel has
                # what the first daemon asked
                fs.direct_io_mmap = fs.direct_io_mmap and \
                    journal.init_granted().get("direct_io_mmap") is True
            resent = session is not None and device.notify_resend(session.fd)
            logger.info("resumed" if resume_init else "mounted", mountpoint=mountpoint,
                        metadata_ttl=spec.metadata_ttl, passthrough=fs.enable_passthrough,
                        known_inodes=len(table.lookups), open_files=len(table.files),
                        resent=resent)
            served = _Session(mountpoint, dev_before, ready_callback, logger)
            try:
                trio.run(served.serve)
            finally:
                pyfuse3.close(unmount=session is None)
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if served.failure is not None:
            raise served.failure
        # A session's daemon that was signalled leaves its connection to a successor.
        logger.info("stopped" if session is not None and served.signalled else "unmounted",
                    mountpoint=mountpoint, **vars(fs.statistics()))
    finally:
        table.close()
        opened.close()


def _say(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass  # nobody is waiting for the answer any more


def _json_stdlib_logs() -> None:
    """Render pyfuse3's and libraries' stdlib log records as JSON lines too."""
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer()],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.processors.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)],
    )
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m csi.fuse", description=__doc__.split("\n")[0])
    parser.add_argument("--mountpoint", required=True)
    parser.add_argument("--volume-id", required=True)
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log.configure(args.log_level)
    _json_stdlib_logs()
    logger = log.get("csi.fuse", volume_id=args.volume_id)
    ready = False

    def announce() -> None:
        nonlocal ready
        ready = True
        _say("READY")

    try:
        req = read_request(sys.stdin)
        run(args.mountpoint, args.volume_id, req.parameters, req.secrets, announce, req.engine,
            req.session, req.writable, req.uploads)
    except Exception as e:  # noqa: BLE001 - every failure must become one answer line
        message = str(e) if isinstance(e, EddyError) else f"{type(e).__name__}: {e}"
        message = " ".join(message.split()) or type(e).__name__
        if not ready:
            logger.error("startup failed", error=message)
            _say(f"ERROR {message}")
            return STARTUP_EXIT
        logger.exception("mount daemon failed")
        return 1
    return 0
