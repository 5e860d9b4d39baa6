"""Every socket eddy serves is born private, whatever the umask it was started with."""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys

import pytest

from tests.support.driver import DriverProcess
from tests.support.wait import wait_for


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    """Start children with umask 0000, as a careless init system might."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_the_csi_and_engine_sockets_are_0600_under_a_0000_umask(tmp_path, open_umask):
    with DriverProcess(str(tmp_path)) as driver:
        engine = os.path.join(driver.state_dir, "engine.sock")
        assert _mode(driver.socket) == 0o600
        assert _mode(engine) == 0o600


def test_a_socket_group_makes_the_csi_socket_0660_for_that_group(tmp_path, open_umask):
    group = grp.getgrgid(os.getgid()).gr_name if os.getgid() else "nogroup"
    gid = grp.getgrnam(group).gr_gid
    with DriverProcess(str(tmp_path), extra_args=("--socket-group", group)) as driver:
        st = os.stat(driver.socket)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, gid)


def test_an_unknown_socket_group_stops_the_start_with_its_name(tmp_path):
    driver = DriverProcess(str(tmp_path), extra_args=("--socket-group", "no-such-group-x"))
    with pytest.raises(RuntimeError, match="no-such-group-x.*no such group"):
        driver.start(timeout=20)


def test_the_mounter_socket_is_0600_under_a_0000_umask(tmp_path, open_umask):
    path = tmp_path / "mounter.sock"
    proc = subprocess.Popen([sys.executable, "-m", "eddy.cli", "mounter", "--endpoint",
                             f"unix://{path}", "--state-dir", str(tmp_path / "state")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(path.exists, timeout=20, what="the mounter's socket")
        assert _mode(str(path)) == 0o600
    finally:
        proc.terminate()
        proc.wait(timeout=30)
