"""A node as a cluster runs it, for fault tests: the mounter and the node plugin in containers
of their own, pods that read in their own mount namespaces.

A "container" is one process started under `unshare --pid --fork --kill-child`: it is PID 1 of
its own PID namespace, so a SIGKILL ends it and everything it started (the mounter's mount
daemons), as a container restart does. A "pod" reads in a private copy of the mount namespace
(`unshare -m --propagation private`), as kubelet's bind mount into a container gives it: a
mount made on the host afterwards never reaches it.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from eddy.base.mounttable import mount_table

from .driver import DriverProcess
from .wait import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTAINER = ("unshare", "--pid", "--fork", "--kill-child")


def inner_pid(pid: int) -> int:
    """The process `unshare --fork` started (PID 1 of the namespace), as the host sees it."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return 0
    return int(children[0]) if children else 0


class MounterContainer:
    """`eddy mounter` in a container of its own."""

    def __init__(self, workdir: str):
        self.socket = os.path.join(workdir, "mounter.sock")
        self.log_path = os.path.join(workdir, "mounter.log")
        self.state_dir = os.path.join(workdir, "mounter-state")
        self.args = [*CONTAINER, sys.executable, "-m", "eddy.cli", "--log-level", "debug",
                     "mounter", "--endpoint", f"unix://{self.socket}",
                     "--state-dir", self.state_dir]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> MounterContainer:
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, cwd=ROOT)

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"eddy mounter exited {self.proc.returncode}:\n{self.log()}")
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(self.socket)
            return True

        wait_for(answers, timeout, "eddy mounter to listen")
        return self

    def kill(self) -> None:
        """A container killed: the mounter and its mount daemons, all at once."""
        _kill_container(self.proc)

    def stop(self) -> None:
        _stop_container(self.proc)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-5000:]


def _kill_container(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    inner = inner_pid(proc.pid)
    proc.kill()
    proc.wait()
    if inner:  # the namespace ends with its PID 1; wait until it has
        wait_for(lambda: not os.path.exists(f"/proc/{inner}"), 10, "the container to end")


def _stop_container(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """SIGTERM to the container's PID 1, as kubelet stops a container; SIGKILL after."""
    if proc is None or proc.poll() is not None:
        return
    inner = inner_pid(proc.pid)
    if inner:
        os.kill(inner, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_container(proc)


class PluginContainer(DriverProcess):
    """`eddy serve --mode all --mounter ...` in a container of its own."""

    def __init__(self, workdir: str, mounter: MounterContainer, extra_args: tuple[str, ...] = ()):
        super().__init__(workdir, extra_args=("--mounter", f"unix://{mounter.socket}",
                                              *extra_args), prefix=CONTAINER)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.channel is not None:
            self.channel.close()
        if sig == signal.SIGKILL:
            _kill_container(self.proc)
        else:
            _stop_container(self.proc)


class Pod:
    """A pod's reader (tests/support/pod_reader.py) in its own mount namespace."""

    def __init__(self, config: dict):
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", sys.executable, "-m",
             "tests.support.pod_reader", json.dumps(config)],
            stdout=subprocess.PIPE, cwd=ROOT)
        self._buf = b""
        self.at = 0
        self.result: dict | None = None
        self.wait_line(lambda m: "opened" in m, 30)

    def wait_line(self, wanted, timeout: float) -> dict:
        """Read the reader's lines until one satisfies `wanted`; return it."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    message = json.loads(line)
                    self.at = message.get("at", self.at)
                    if message.get("done"):
                        self.result = message
                    if wanted(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise AssertionError(f"the pod's reader said nothing wanted in {timeout} s")
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"the pod's reader ended ({self.proc.wait()})")
                self._buf += chunk

    def progress(self) -> int:
        """Bytes read so far, from what the reader has said up to now (without waiting)."""
        try:
            self.wait_line(lambda m: False, 0.05)
        except AssertionError:
            pass
        return self.at

    def wait_at(self, position: int, timeout: float = 60.0) -> None:
        """Until the reader has read `position` bytes in all."""
        if self.at < position:
            self.wait_line(lambda m: m.get("at", 0) >= position or m.get("done"), timeout)

    def finish(self, timeout: float = 300.0) -> dict:
        if self.result is None:
            self.wait_line(lambda m: m.get("done"), timeout)
        self.proc.wait(10)
        return self.result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def mounts_at(path: str) -> int:
    """How many mounts the host's mount table has at exactly `path` (no stat of `path`
    itself: a mount nobody serves would not answer)."""
    parent, name = os.path.split(os.path.abspath(path))
    path = os.path.join(os.path.realpath(parent), name)
    return sum(1 for m in mount_table() if m.mount_point == path)
