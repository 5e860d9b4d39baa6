"""The mounter's own rules, with the mount and the daemon replaced by fakes that count.

What a real mount and real daemons do across kills is in tests/csi/test_faults.py; here: a
failing start is retried with backoff for as long as the volume is staged, a record that
cannot be read never stops the mounter, and a process is taken for a volume's daemon only if
it is that volume's daemon.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from csi import daemons
from csi.daemons import is_daemon_of, process_start
from csi.mounter.mounter import Mounter
from csi.mounter.records import MountRecord, MountRecords
from csi.mounter.states import Phase
from eddy.base.errors import AlreadyExists, Unavailable
from tests.support.fake_daemons import Fakes, config
from tests.support.wait import wait_for


@pytest.fixture
def fakes():
    f = Fakes()
    yield f
    f.close()


def mounter_of(tmp_path, fakes) -> Mounter:
    return Mounter(str(tmp_path / "state"), others_hold=False, start_daemon=fakes.start,
                   mount=fakes.mount)


def test_stage_is_idempotent_and_other_parameters_are_refused(tmp_path, fakes):
    mounter = mounter_of(tmp_path, fakes)
    mounter.start()
    try:
        first = mounter.stage(config(tmp_path))
        assert mounter.stage(config(tmp_path)) == first
        assert first.phase is Phase.SERVING and first.held and len(fakes.started) == 1
        with pytest.raises(AlreadyExists):
            mounter.stage(config(tmp_path, readAhead="2"))
        mounter.unstage("v1")
        mounter.unstage("v1")  # already gone: nothing to do
        assert mounter.states() == [] and not fakes.started[0].running
    finally:
        mounter.close()


def test_a_failed_stage_leaves_nothing(tmp_path, fakes):
    mounter = mounter_of(tmp_path, fakes)
    mounter.start()
    fakes.fail_next = 1
    try:
        with pytest.raises(Unavailable, match="the source said no"):
            mounter.stage(config(tmp_path))
        assert mounter.states() == []
        assert os.listdir(tmp_path / "state" / "volumes") == []
    finally:
        mounter.close()


def test_a_dead_daemon_is_restarted_with_backoff_until_one_starts(tmp_path, fakes):
    mounter = mounter_of(tmp_path, fakes)
    mounter.start()
    try:
        mounter.stage(config(tmp_path))
        fakes.fail_next = 2
        fakes.started[0].running = False  # it died
        [state] = wait_for(lambda: [s for s in mounter.states() if "2 in a row" in s.message],
                           10, "two failed restarts")
        assert state.phase is Phase.RESTARTING and "the source said no" in state.message
        [state] = wait_for(lambda: [s for s in mounter.states() if s.phase is Phase.SERVING],
                           10, "the third start")
        assert len(fakes.started) == 2 and state.restarts == 1
        assert fakes.mounted == [str(tmp_path / "mnt" / "v1")]  # resumed, never mounted again
        # The successor got the same connection and session, and the secrets from the record.
        assert fakes.started[1].config.session_fd == fakes.started[0].config.session_fd
        assert fakes.started[1].config.secrets == {"token": "s3cr3t"}
    finally:
        mounter.close()


def test_a_connection_whose_init_was_not_kept_is_mounted_anew(tmp_path, fakes):
    """A daemon that could not keep the FUSE_INIT (stock pyfuse3) has no successor that can
    resume: the volume is mounted again at once, not retried five times."""
    mounter = mounter_of(tmp_path, fakes)
    mounter.start()
    try:
        mounter.stage(config(tmp_path))
        os.unlink(os.path.join(fakes.started[0].config.session_dir, "init"))
        fakes.started[0].running = False
        [state] = wait_for(lambda: [s for s in mounter.states() if s.device == "0:102"
                                    and s.phase is Phase.SERVING], 10, "a new mount served")
        assert len(fakes.mounted) == 2 and len(fakes.started) == 2 and state.restarts == 1
    finally:
        mounter.close()


@pytest.mark.expect_error_log("mount_record.unreadable")
def test_an_unreadable_record_is_moved_aside_and_the_rest_start(tmp_path, fakes):
    records = MountRecords(str(tmp_path / "state"))
    records.save(MountRecord("good", str(tmp_path / "mnt" / "good"), {"source": "local:///a"},
                             device="0:1"))
    records.save(MountRecord("bad", str(tmp_path / "mnt" / "bad"), {"source": "local:///b"}))
    [bad] = [p for p in pathlib.Path(records.dir).glob("*/record.json")
             if '"bad"' in p.read_text()]
    bad.write_text('{"volume_id": "bad", "mountp')  # torn by a full disk
    mounter = mounter_of(tmp_path, fakes)
    mounter.start()
    try:
        assert [s.volume_id for s in mounter.states()] == ["good"]
        assert len(mounter.problems) == 1 and "moved aside" in mounter.problems[0]
        assert bad.with_name("record.json.broken").exists() and not bad.exists()
    finally:
        mounter.close()


def test_volume_ids_that_differ_only_in_slashes_have_their_own_records(tmp_path):
    records = MountRecords(str(tmp_path))
    for volume_id in ("a/b", "a_b", "../x"):
        records.save(MountRecord(volume_id, f"/m/{volume_id}", {}), {"k": volume_id})
    loaded, problems = records.load_all()
    assert sorted(r.volume_id for r in loaded) == ["../x", "a/b", "a_b"] and problems == []
    assert records.secrets("a/b") == {"k": "a/b"}
    assert all(name.startswith("v-") for name in os.listdir(records.dir))


@pytest.fixture
def impostor():
    """A live process whose command line looks like another volume's mount daemon."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "csi.fuse", "--volume-id", "other"])
    cmdline = pathlib.Path(f"/proc/{proc.pid}/cmdline")
    wait_for(lambda: b"csi.fuse" in cmdline.read_bytes(), 10, "the impostor to start")
    yield proc
    proc.kill()
    proc.wait()


def test_only_the_volumes_own_daemon_is_adopted_or_signalled(tmp_path, fakes, impostor):
    started = process_start(impostor.pid)
    assert is_daemon_of(impostor.pid, started, "other")
    assert not is_daemon_of(impostor.pid, started, "v1")  # another volume's daemon
    assert not is_daemon_of(impostor.pid, started + 1, "other")  # a reused pid
    records = MountRecords(str(tmp_path / "state"))
    records.save(MountRecord("v1", str(tmp_path / "mnt" / "v1"), {"source": "local:///a"},
                             device="0:1", pid=impostor.pid, pid_start=started))
    mounter = mounter_of(tmp_path, fakes)
    mounter.start()
    try:
        [state] = mounter.states()
        assert state.pid == 0  # not adopted
        mounter.unstage("v1")
        assert impostor.poll() is None  # and never signalled
    finally:
        mounter.close()


def test_a_child_daemon_is_seen_to_die(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    daemon = daemons.MountDaemon(config(tmp_path), proc.pid, proc)
    assert daemon.alive()
    os.kill(proc.pid, signal.SIGKILL)
    wait_for(lambda: not daemon.alive(), 10, "the child to be gone")
    assert daemon.exit_status == -signal.SIGKILL
