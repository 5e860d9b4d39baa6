"""A mount daemon's command line holds any volume id, and only its own daemon is recognised."""

from __future__ import annotations

import subprocess
import sys

import pytest

from csi import daemons
from tests.support.wait import wait_for

SLEEP = "import time; time.sleep(60)"


@pytest.fixture
def process():
    procs = []

    def start(*argv: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", SLEEP, *argv])
        procs.append(proc)

        def exec_done() -> bool:  # until then /proc shows the parent's command line
            with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                return SLEEP.encode() in f.read()

        wait_for(exec_done, timeout=10, what="the process to start")
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("volume_id", ["-rf", "--help", "vol 1", "a=b"])
def test_an_id_that_looks_like_an_option_stays_the_volume_id(process, volume_id):
    config = daemons.DaemonConfig(volume_id, "/-staging", {})
    argv = daemons.daemon_command(config)[3:]  # after `python -m csi.fuse`
    proc = process("csi.fuse", *argv)
    started = daemons.process_start(proc.pid)
    assert daemons.is_daemon_of(proc.pid, started, volume_id)
    assert not daemons.is_daemon_of(proc.pid, started, volume_id + "x")
    from csi.fuse.daemon import parse_args

    args = parse_args(argv)
    assert (args.volume_id, args.mountpoint) == (volume_id, "/-staging")


def test_a_daemon_started_by_an_older_eddy_is_still_recognised(process):
    proc = process("csi.fuse", "--mountpoint", "/s", "--volume-id", "vol-1")
    started = daemons.process_start(proc.pid)
    assert daemons.is_daemon_of(proc.pid, started, "vol-1")
    assert not daemons.is_daemon_of(proc.pid, started, "vol-2")
