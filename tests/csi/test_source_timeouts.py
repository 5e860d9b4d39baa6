"""One volume's hung source fails that volume's reads in time; other volumes read on.

The real `eddy serve` runs two volumes on one engine: one over an HTTP server whose file data
hangs (it accepts and never answers), one over a local directory. Readers of the hung volume
get ETIMEDOUT (or EIO) within a bounded time, while the healthy volume is read through its
FUSE mount with the right bytes; its throughput with and without the fault is printed (a
figure, not asserted: the machine is shared). When the server answers again, so does the
volume.
"""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from tests.support import driver
from tests.support.driver import DriverProcess, sha, stage_and_publish, tier_args
from tests.support.fuse import fuse_problem
from tests.support.http_source import HttpSource
from tests.support.wait import wait_for

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(300),
              pytest.mark.skipif(fuse_problem() is not None, reason=str(fuse_problem()))]

MiB = 1 << 20
TIMEOUT = 2.0  # the hung volume's sourceTimeout
MARGIN = 3.0  # a failed read may take this many deadlines on a loaded 2-core machine
SICK_READERS = 12  # more than the engine has slots for one dataset (sourceConcurrency 8)


def _write(root, files: dict[str, bytes]) -> None:
    os.makedirs(root, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _throughput(mount, files: dict[str, bytes]) -> float:
    """Read `files` (cold) through the mount, checking every byte; MiB/s."""
    start = time.monotonic()
    for name, data in files.items():
        assert sha(_read(os.path.join(mount, name))) == sha(data), name
    return sum(map(len, files.values())) / MiB / (time.monotonic() - start)


def test_a_hung_http_source_fails_its_reads_in_time_while_another_volume_reads(tmp_path):
    sick_files = {f"s{i}.bin": os.urandom(MiB + i) for i in range(SICK_READERS)}
    before = {f"a{i}.bin": os.urandom(4 * MiB) for i in range(8)}
    during = {f"b{i}.bin": os.urandom(4 * MiB) for i in range(8)}
    _write(tmp_path / "site", sick_files)
    _write(tmp_path / "local", before | during)
    with HttpSource(tmp_path / "site") as http:
        drv = DriverProcess(str(tmp_path / "driver"),
                            extra_args=tier_args(f"SSD:{tmp_path / 'ssd'}:256Mi")).start()
        try:
            sick = driver.create(drv, "pvc-sick", {"source": http.url, "metadataTTL": "immutable",
                                            "readAhead": "0", "sourceTimeout": str(TIMEOUT)})
            well = driver.create(drv, "pvc-well", {"source": f"local://{tmp_path / 'local'}"})
            sick_staging, [sick_mount] = stage_and_publish(drv, tmp_path, sick,
                                                           targets=("pod-sick",))
            well_staging, [well_mount] = stage_and_publish(drv, tmp_path, well,
                                                           targets=("pod-well",))
            for name in sick_files:  # its metadata is known; only file data will hang
                assert os.stat(os.path.join(sick_mount, name)).st_size == len(sick_files[name])

            baseline = _throughput(well_mount, before)
            http.gate.clear()  # the server accepts and never answers file data
            failures: list[tuple[str, int, float]] = []
            stop = threading.Event()

            def read_sick(name: str) -> None:
                while not stop.is_set():
                    start = time.monotonic()
                    try:
                        _read(os.path.join(sick_mount, name))
                    except OSError as e:
                        failures.append((name, e.errno, time.monotonic() - start))
                    else:
                        failures.append((name, 0, time.monotonic() - start))

            readers = [threading.Thread(target=read_sick, args=(name,), daemon=True)
                       for name in sick_files]
            for reader in readers:
                reader.start()
            wait_for(lambda: len(http.data_gets()) >= 8, 30, "the hung volume's reads to hang")
            faulted = _throughput(well_mount, during)
            wait_for(lambda: len(failures) >= SICK_READERS, TIMEOUT * MARGIN * 4,
                     "every reader of the hung volume to get its error")
            stop.set()
            for reader in readers:
                reader.join(TIMEOUT * MARGIN * 2)
                assert not reader.is_alive(), "a read of the hung volume never returned"
            print(f"\nhealthy volume: {baseline:.0f} MiB/s alone, {faulted:.0f} MiB/s while "
                  f"{SICK_READERS} readers of a hung source wait; hung reads failed in "
                  f"{min(f[2] for f in failures):.1f}..{max(f[2] for f in failures):.1f} s "
                  f"(sourceTimeout {TIMEOUT:g} s), errnos {sorted({f[1] for f in failures})}")
            for name, code, seconds in failures:
                assert code in (errno.ETIMEDOUT, errno.EIO), (name, code)
                assert seconds < TIMEOUT * MARGIN, (name, seconds)

            http.gate.set()  # the server answers again, and so does the volume
            wait_for(lambda: _read(os.path.join(sick_mount, "s0.bin")) == sick_files["s0.bin"],
                     TIMEOUT * MARGIN * 4, "the recovered volume to read")
            for name, data in sick_files.items():
                assert sha(_read(os.path.join(sick_mount, name))) == sha(data), name
            driver.unpublish_and_unstage(drv, sick, sick_staging, [sick_mount])
            driver.unpublish_and_unstage(drv, well, well_staging, [well_mount])
        finally:
            http.gate.set()
            drv.stop()
            driver.cleanup_mounts(str(tmp_path))
