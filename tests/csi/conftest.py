"""Fixtures the CSI tests share."""

from __future__ import annotations

import pytest

from tests.support.driver import DriverProcess, cleanup_mounts, tier_args


def _serve(tmp_path, *args: str):
    drv = DriverProcess(str(tmp_path / "driver"), extra_args=args).start()
    yield drv
    drv.stop()
    cleanup_mounts(str(tmp_path))


@pytest.fixture
def driver(tmp_path):
    """A real `eddy serve --mode all` whose kubelet directory is the test's own; every mount
    under the test's directory is removed at the end."""
    yield from _serve(tmp_path)


@pytest.fixture
def mem_driver(tmp_path):
    """`driver` with one 256 MiB MEM tier under the test's directory."""
    yield from _serve(tmp_path, *tier_args(f"MEM:{tmp_path}/mem:256Mi"))
