"""Node-stage secrets never reach a disk: they live on tmpfs while their volume is staged."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from csi.state.secrets import SecretStore
from eddy.base.mounttable import in_memory
from tests.support.driver import (
    DriverProcess,
    cleanup_mounts,
    create,
    stage_and_publish,
    teardown_volume,
)
from tests.support.fuse import fuse_problem

KEY_ID, SECRET = "AKIAEDDYMARKER0001", "eddy-secret-marker-7f3a9c"

pytestmark = pytest.mark.skipif(fuse_problem() is not None, reason=str(fuse_problem()))


@pytest.fixture
def secrets_dir():
    path = f"/dev/shm/eddy-secrets-test-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def files_holding(root: str, needle: bytes) -> list[str]:
    found = []
    for top, _, names in os.walk(root):
        for name in names:
            path = os.path.join(top, name)
            try:
                with open(path, "rb") as f:
                    if needle in f.read():
                        found.append(path)
            except OSError:
                continue  # sockets, vanished files
    return found


def test_staged_secrets_are_on_tmpfs_only_and_gone_at_unstage(tmp_path, secrets_dir):
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_bytes(b"hello")
    driver = DriverProcess(str(tmp_path / "driver"), extra_args=("--secrets-dir", secrets_dir))
    try:
        with driver:
            volume = create(driver, "pvc-secret", {"source": f"local://{source}"})
            staging, targets = stage_and_publish(
                driver, tmp_path, volume, secrets={"accessKeyId": KEY_ID,
                                                   "secretAccessKey": SECRET})
            assert in_memory(secrets_dir)
            for needle in (KEY_ID.encode(), SECRET.encode()):
                assert files_holding(str(tmp_path), needle) == []  # state dir, logs, mounts
                assert files_holding(secrets_dir, needle)  # kept where a restart finds them
            teardown_volume(driver, volume, staging, targets)
            assert files_holding(secrets_dir, SECRET.encode()) == []
    finally:
        cleanup_mounts(str(tmp_path))


def test_secrets_an_older_eddy_wrote_to_disk_move_to_tmpfs(tmp_path, secrets_dir):
    from csi.state.staging import StagedVolume, StagingRecords

    node = tmp_path / "node"
    node.mkdir()
    (node / "vol-1.json").write_text(
        '{"volume_id": "vol-1", "staging_path": "/s", "parameters": {}}')
    (node / "vol-1.secrets").write_text(f'{{"secretAccessKey": "{SECRET}"}}')
    (node / "gone.secrets").write_text(f'{{"secretAccessKey": "{SECRET}"}}')  # no record
    records = StagingRecords(str(tmp_path), secrets_dir)
    loaded, _ = records.load_all()
    assert [v.volume_id for v in loaded] == ["vol-1"]
    assert records.secrets("vol-1") == {"secretAccessKey": SECRET}
    assert files_holding(str(tmp_path), SECRET.encode()) == []
    records.save(StagedVolume("vol-2", "/s2", {}), {"secretAccessKey": "x"})
    assert os.listdir(SecretStore(str(node), secrets_dir).dir)


def test_a_secrets_dir_that_is_not_in_ram_gets_a_tmpfs(tmp_path):
    path = str(tmp_path / "secrets")
    try:
        store = SecretStore(str(tmp_path / "owner"), path)
        assert in_memory(path)
        store.save("v", {"k": "v"})
        assert store.load("v") == {"k": "v"}
    finally:
        cleanup_mounts(str(tmp_path))
