"""The kind end-to-end run (e2e/cluster/run.sh), where Docker and kind exist.

It cannot run in this project's CI (no Docker daemon, no network beyond package registries),
so it only runs when asked: `EDDY_E2E_KIND=1 make e2e`. The script's syntax is checked always.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("run.sh")


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK)


def _docker_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0


@pytest.mark.skipif(os.environ.get("EDDY_E2E_KIND") != "1",
                    reason="set EDDY_E2E_KIND=1 to create a kind cluster (needs Docker, kind)")
def test_seed_scenario_on_kind():
    missing = [tool for tool in ("kind", "kubectl") if shutil.which(tool) is None]
    if missing or not _docker_answers():
        pytest.fail(f"EDDY_E2E_KIND=1 but {', '.join(missing) or 'the Docker daemon'} "
                    "is not available")
    subprocess.run([str(SCRIPT)], check=True, timeout=3600)
