"""The filesystems under test, each mounted the way its users mount it.

A `System` mounts one dataset (a prefix of the bench bucket) with a cache directory it is
given, so the same scenario code runs every system: a fresh cache dir is a cold start, the
same dir on a fresh mount is a warm one. Every mount is a context manager that unmounts and
ends its process on any exit, Ctrl-C included; `sweep` removes whatever an interrupted run
could still have left under the work dir.

    eddy    `eddy mount s3://bench/PREFIX` with one tier in the cache dir, MEM unless told
            otherwise (SSD for the disk rows), and the volume parameters it was given (the
            daemon is detached; `eddy umount` stops it)
    rclone  `rclone mount --vfs-cache-mode full --cache-dir DIR`, S3 provider Other
    s3fs    `s3fs -o use_cache=DIR,use_path_request_style`
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

from csi import mounts as hostmounts
from eddy.base.mounttable import mount_table
from tests.support.logs import log_events

from .measure import peak_rss_mib
from .source import BUCKET, Source

MOUNT_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0
TIER_HEADROOM = 1.25  # a tier this much larger than the dataset keeps every block


class Mounted:
    """A live mount: its path, the pid of the process serving it and that process's log file
    (if it has one of its own)."""

    def __init__(self, path: str, pid: int, log: str | None = None):
        self.path = path
        self.pid = pid
        self.log = log

    def peak_rss_mib(self) -> float | None:
        return peak_rss_mib(self.pid)


class System:
    """One way to mount the bench's datasets; subclasses say how to start and stop it."""

    name = ""

    def __init__(self, source: Source, workdir: str):
        self.source = source
        self.workdir = workdir
        self.log_dir = os.path.join(workdir, "logs", self.name)
        os.makedirs(self.log_dir, exist_ok=True)

    @contextlib.contextmanager
    def mount(self, prefix: str, cache_dir: str, dataset_bytes: int) -> Iterator[Mounted]:
        path = os.path.join(self.workdir, "mnt", f"{self.name}-{prefix}")
        os.makedirs(path, exist_ok=True)
        os.makedirs(cache_dir, exist_ok=True)
        mounted = self._start(prefix, path, cache_dir, dataset_bytes)
        try:
            yield mounted
        finally:
            self._stop(mounted)

    def _start(self, prefix: str, path: str, cache_dir: str, dataset_bytes: int) -> Mounted:
        raise NotImplementedError

    def _stop(self, mounted: Mounted) -> None:
        """Unmount (lazily if busy) and wait for the serving process to end."""
        with contextlib.suppress(hostmounts.MountError):
            hostmounts.unmount_all(mounted.path)
        _wait_gone(mounted.pid)

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for name in sorted(os.listdir(self.log_dir)):
            with open(os.path.join(self.log_dir, name), errors="replace") as f:
                out += [f"{name}: {line.rstrip()}" for line in f.readlines()[-lines:]]
        return "\n".join(out)


class Eddy(System):
    name = "eddy"

    def __init__(self, source: Source, workdir: str, params: dict[str, str] | None = None,
                 tier: str = "MEM"):
        super().__init__(source, workdir)
        self.params = params or {}
        self.tier = tier  # its one tier's kind (MEM, SSD): a directory of that name, lowercase
        self.secrets_file = os.path.join(workdir, "eddy-secrets.json")
        fd = os.open(self.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(source.secrets, f)

    def _start(self, prefix: str, path: str, cache_dir: str, dataset_bytes: int) -> Mounted:
        tier_bytes = int(dataset_bytes * TIER_HEADROOM) + (64 << 20)
        out = _eddy("mount", f"s3://{BUCKET}/{prefix}", path,
                    "--param", f"endpoint={self.source.endpoint}", "--param", "region=us-east-1",
                    "--secrets-file", self.secrets_file,
                    "--state-dir", os.path.join(cache_dir, "state"),
                    "--tier", f"{self.tier}:{os.path.join(cache_dir, self.tier.lower())}:"
                              f"{tier_bytes}",
                    "--log-dir", self.log_dir,
                    *(arg for k, v in self.params.items() for arg in ("--param", f"{k}={v}")))
        started = json.loads(out)
        return Mounted(path, started["pid"], started["log"])

    def _stop(self, mounted: Mounted) -> None:
        if hostmounts.is_mount_point(mounted.path):
            with contextlib.suppress(subprocess.CalledProcessError):
                _eddy("umount", mounted.path)
        if not _wait_gone(mounted.pid):
            super()._stop(mounted)

    def preload(self, mounted: Mounted) -> dict:
        """`eddy preload --wait`: make sure every block is cached; the job's last state."""
        lines = _eddy("preload", "--mountpoint", mounted.path, "--wait", "--json").splitlines()
        return json.loads(lines[-1])

    def status(self, mounted: Mounted) -> dict:
        rows = json.loads(_eddy("status", "--mountpoint", mounted.path, "--json"))
        return rows[0] if rows else {}

    def session(self, mounted: Mounted) -> dict:
        """What the daemon of an ended mount did (FUSE reads, passthrough opens, ...), from the
        `unmounted` event it logged last; {} if there is none. Every mount of one mountpoint
        logs to the same file, so this is the newest one's."""
        events = log_events(mounted.log or "", "unmounted")
        last = events[-1] if events else {}
        return {k: v for k, v in last.items() if k not in ("event", "level", "timestamp")}


class Rclone(System):
    name = "rclone"

    def _start(self, prefix: str, path: str, cache_dir: str, dataset_bytes: int) -> Mounted:
        env = _peer_env()
        env.update({
            "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": self.source.endpoint,
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": self.source.secrets["accessKeyId"],
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": self.source.secrets["secretAccessKey"],
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        })
        config = os.path.join(self.workdir, "rclone.conf")  # empty: the remote is in env
        open(config, "a").close()
        args = ["rclone", "mount", f"bench:{BUCKET}/{prefix}", path, "--config", config,
                "--read-only", "--vfs-cache-mode", "full", "--cache-dir", cache_dir]
        return _spawn(args, path, env, os.path.join(self.log_dir, f"{prefix}.log"))


class S3fs(System):
    name = "s3fs"

    def __init__(self, source: Source, workdir: str):
        super().__init__(source, workdir)
        self.passwd_file = os.path.join(workdir, "s3fs.passwd")
        fd = os.open(self.passwd_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{source.secrets['accessKeyId']}:{source.secrets['secretAccessKey']}\n")

    def _start(self, prefix: str, path: str, cache_dir: str, dataset_bytes: int) -> Mounted:
        options = [f"url={self.source.endpoint}", "use_path_request_style",
                   f"passwd_file={self.passwd_file}", f"use_cache={cache_dir}", "ro"]
        args = ["s3fs", f"{BUCKET}:/{prefix}", path, "-f", "-o", ",".join(options)]
        return _spawn(args, path, _peer_env(), os.path.join(self.log_dir, f"{prefix}.log"))


def _eddy(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "eddy.cli", *args], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, f"eddy {args[0]}", proc.stdout,
                                            proc.stderr)
    return proc.stdout


def _peer_env() -> dict[str, str]:
    """This environment without AWS_* and CA settings: peers get only what we give them
    (rclone's S3 backend fails with AWS_CA_BUNDLE set)."""
    drop = ("AWS_", "RCLONE_", "SSL_CERT", "CURL_CA", "REQUESTS_CA")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def _spawn(args: list[str], path: str, env: dict[str, str], log_path: str) -> Mounted:
    """Start a FUSE program in the foreground and wait until `path` is its mount."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    try:
        while not hostmounts.is_mount_point(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path, errors="replace") as f:
                    tail = "".join(f.readlines()[-5:]).strip()
                raise RuntimeError(f"{args[0]} did not mount {path}: {tail or 'no output'}")
            time.sleep(0.05)
    except BaseException:  # Ctrl-C included: nobody else knows this process yet
        _kill(proc.pid)
        with contextlib.suppress(hostmounts.MountError):
            hostmounts.unmount_all(path)
        raise
    return Mounted(path, proc.pid)


def _wait_gone(pid: int, timeout: float = EXIT_TIMEOUT) -> bool:
    """Wait for `pid` to exit (reaping it if it is our child); kill it after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0]:
                return True
        if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
            return True
        time.sleep(0.05)
    _kill(pid)
    return False


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def sweep(workdir: str) -> list[str]:
    """Lazily unmount anything still mounted under `workdir`; the paths it found."""
    found = sorted({m.mount_point for m in mount_table()
                    if m.mount_point.startswith(workdir.rstrip("/") + "/")}, reverse=True)
    for path in found:
        with contextlib.suppress(hostmounts.MountError):
            hostmounts.unmount(path, lazy=True)
    return found


def installed(tool: str) -> str | None:
    """Install `tool` with apt-get if it is missing; None when usable, else why not."""
    if shutil.which(tool):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    last = ""
    for step in (["apt-get", "install", "-y", "-qq", tool],
                 ["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", tool]):
        try:
            proc = subprocess.run(step, env=env, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"`{' '.join(step)}` failed: {e}"
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        if step[1] == "install" and proc.returncode == 0 and shutil.which(tool):
            return None
    return f"apt-get install {tool} failed: {last}"
