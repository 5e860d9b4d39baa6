"""Fixtures the CSI tests share."""

from __future__ import annotations

import pytest

from tests.support.driver import DriverProcess, cleanup_mounts


@pytest.fixture
def driver(tmp_path):
    """A real `eddy serve --mode all` whose kubelet directory is the test's own; every mount
    under the test's directory is removed at the end."""
    drv = DriverProcess(str(tmp_path / "driver")).start()
    yield drv
    drv.stop()
    cleanup_mounts(str(tmp_path))
