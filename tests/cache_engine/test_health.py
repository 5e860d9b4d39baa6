"""A failing tier never fails a read: it is set aside, reads go on, and it is taken back.

Real filesystems broken on purpose: a tier directory removed while the engine runs, a tmpfs
remounted read-only, a tmpfs filled by someone else's file.
"""

from __future__ import annotations

import os
import shutil

import pytest

from cache_engine.reader import DatasetReader
from cache_engine.tiers import Tier
from tests.support.engine import BS, make_spec
from tests.support.mounts import fill
from tests.support.wait import wait_for


@pytest.fixture
def read(engines):
    """Read a whole file through a fresh DatasetReader (nothing in its memory), as a mount."""
    made = []

    def read(engine, path: str) -> bytes:
        reader = DatasetReader(engine, make_spec(), {})
        made.append(reader)
        entry = reader.stat(path)
        return bytes(reader.read(path, 0, entry.size, entry.version))

    yield read
    for reader in made:
        reader.close()


def tiers_of(engine, path: str) -> set[str]:
    return {b.tier for b in engine.blocks() if b.key.path == path}


def source_reads(source, path: str) -> int:
    return sum(1 for p, _, _ in source.reads if p == path)


def test_a_tier_directory_removed_while_the_engine_runs(engines, read, source):
    engine = engines()
    mem = engine.tiers[0]
    assert read(engine, "data/b.bin") == source.data("data/b.bin")
    assert tiers_of(engine, "data/b.bin") == {"MEM"}
    shutil.rmtree(mem.path)  # an admin clears /dev/shm

    # New blocks go to the next tier; the vanished ones are fetched again, once each.
    assert read(engine, "small.txt") == b"hello"
    assert read(engine, "data/b.bin") == source.data("data/b.bin")
    assert source_reads(source, "data/b.bin") == 2 * 3
    assert tiers_of(engine, "data/b.bin") == tiers_of(engine, "small.txt") == {"SSD"}
    stats = engine.statistics().tiers["MEM"]
    assert not stats.in_service and stats.faults == 1

    engine.maintain()  # the probe makes the directories again and writes there
    assert engine.statistics().tiers["MEM"].in_service
    assert os.path.isdir(mem.blocks_dir) and os.listdir(mem.tmp_dir) == []
    assert read(engine, "data/a.bin") == source.data("data/a.bin")
    assert "MEM" in tiers_of(engine, "data/a.bin")


def test_a_tier_directory_removed_is_noticed_without_a_store(engines, source):
    engine = engines()
    shutil.rmtree(engine.tiers[0].path)
    engine.maintain()
    assert engine.statistics().tiers["MEM"].faults == 1
    engine.maintain()
    assert engine.statistics().tiers["MEM"].in_service


def test_a_read_only_tier_is_set_aside_until_writable_again(tmpfs, engines, read, source,
                                                            tmp_path):
    mnt = tmpfs.mount(tmp_path / "ram", "4m")
    engine = engines(tiers=[Tier("MEM", os.path.join(mnt, "mem"), 16 * BS),
                            Tier("SSD", str(tmp_path / "ssd"), 16 * BS)],
                     maintenance=True, maintenance_interval=0.02)
    assert read(engine, "data/b.bin") == source.data("data/b.bin")
    assert engine.drain(30)  # its extent is built: no file is open for writing on the mount
    tmpfs.remount(mnt, "ro")

    assert read(engine, "data/a.bin") == source.data("data/a.bin")
    assert tiers_of(engine, "data/a.bin") == {"SSD"}
    # What the read-only tier holds is still read from it, not from the source.
    assert read(engine, "data/b.bin") == source.data("data/b.bin")
    assert source_reads(source, "data/b.bin") == 3
    stats = engine.statistics().tiers["MEM"]
    assert not stats.in_service and stats.faults == 1

    tmpfs.remount(mnt, "rw")
    wait_for(lambda: engine.statistics().tiers["MEM"].in_service, what="MEM back in service")
    assert read(engine, "small.txt") == b"hello"
    assert tiers_of(engine, "small.txt") == {"MEM"}
    assert engine.statistics().tiers["MEM"].faults == 1


def test_a_full_tier_is_set_aside_until_it_has_room(tmpfs, engines, read, source, tmp_path):
    mnt = tmpfs.mount(tmp_path / "ram", "1m")
    engine = engines(tiers=[Tier("MEM", os.path.join(mnt, "mem"), 64 * BS),  # more than 1m
                            Tier("SSD", str(tmp_path / "ssd"), 16 * BS)],
                     maintenance=True, maintenance_interval=0.02)
    filler = fill(mnt)  # someone else's file takes the room

    assert read(engine, "data/a.bin") == source.data("data/a.bin")
    assert tiers_of(engine, "data/a.bin") == {"SSD"}
    stats = engine.statistics()
    assert not stats.tiers["MEM"].in_service and stats.tiers["MEM"].faults == 1
    assert stats.tier_write_failures < 6  # not tried for every block (two may race)
    assert os.listdir(engine.tiers[0].tmp_dir) == []

    os.unlink(filler)
    wait_for(lambda: engine.statistics().tiers["MEM"].in_service, what="MEM back in service")
    assert read(engine, "data/b.bin") == source.data("data/b.bin")
    assert tiers_of(engine, "data/b.bin") == {"MEM"}


def test_with_every_tier_failing_reads_are_served_uncached(tmpfs, engines, read, source,
                                                           tmp_path):
    mnt = tmpfs.mount(tmp_path / "ram", "1m")
    engine = engines(tiers=[Tier("MEM", os.path.join(mnt, "mem"), 16 * BS)])
    tmpfs.remount(mnt, "ro")
    for _ in range(2):
        assert read(engine, "data/a.bin") == source.data("data/a.bin")
    stats = engine.statistics()
    assert stats.uncached_reads == 2 * 6 and stats.tiers["MEM"].faults == 1
