"""Extents: a file version cached whole sits in one tier file the kernel can read.

Blocks stored in a RAM tier go straight into their version's extent (growing.py); a version
cached whole some other way (promoted back from a disk tier) is compacted into one.
"""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from cache_engine.index import BlockIndex
from eddy.base.mounttable import in_memory
from tests.support.engine import BS, make_spec, make_tiers, read_all
from tests.support.tiers import flip_a_byte


@pytest.fixture
def engines(engines):
    """The tests' tiers (under tmp_path) stand for tiers held in RAM, whose extents are
    trusted as built; test_scrub.py has disk tiers."""
    return lambda held_in_ram=lambda path: True, **kw: engines(held_in_ram=held_in_ram, **kw)


def cached_whole(engine, source, path="data/b.bin", **spec):
    """Read `path` through the engine, wait for its compaction; (dataset id, entry)."""
    ds = engine.open_dataset(make_spec(**spec), {}).dataset_id
    assert read_all(engine, ds, source, path) == source.data(path)
    engine.drain()
    return ds, engine.stat(ds, path)


def tier_files(tier) -> dict[str, int]:
    out = {}
    for dirpath, _dirs, names in os.walk(tier.blocks_dir):
        for name in names:
            full = os.path.join(dirpath, name)
            out[full] = os.path.getsize(full)
    return out


def test_a_file_cached_whole_is_one_extent_holding_its_bytes_with_no_copy(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    assert read_all(engine, ds, source, "data/b.bin") == source.data("data/b.bin")
    entry = engine.stat(ds, "data/b.bin")  # no drain: the last block landed in the extent
    hits = engine.statistics().hits
    path = engine.extent(ds, entry.path, entry.version, entry.size)
    with open(path, "rb") as f:
        assert f.read() == source.data("data/b.bin")
    assert tier_files(engine.tiers[0]) == {path: entry.size}  # the block files are gone
    blocks = sorted(engine.blocks(ds), key=lambda b: b.key.index)
    assert [(b.file, b.offset) for b in blocks] == [(path, i * BS) for i in range(3)]
    stats = engine.statistics()
    assert (stats.extents_built, stats.extents_served) == (0, 1)  # filled in place
    assert stats.hits == hits + 3  # the open counts every block it hands over
    assert stats.tiers["MEM"].used == entry.size and stats.tiers["MEM"].reserved == 0
    # Blocks located inside the extent still read right, block by block.
    assert read_all(engine, ds, source, "data/b.bin") == source.data("data/b.bin")


def test_no_extent_for_a_file_partly_cached_spread_over_tiers_or_of_one_block(engines, source,
                                                                            tmp_path):
    engine = engines(tiers=make_tiers(str(tmp_path), 2, 8))  # MEM holds 2 of b's 3 blocks
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    entry = engine.stat(ds, "data/b.bin")
    engine.locate(ds, entry.path, entry.version, 0, entry.size)
    assert engine.extent(ds, entry.path, entry.version, entry.size) is None  # 1 of 3 blocks
    read_all(engine, ds, source, "data/b.bin")
    engine.drain()
    assert {b.tier for b in engine.blocks(ds)} == {"MEM", "SSD"}
    assert engine.extent(ds, entry.path, entry.version, entry.size) is None
    assert engine.statistics().extents_built == 0
    small = engine.stat(ds, "small.txt")  # one block: one locate reads it anyway
    read_all(engine, ds, source, "small.txt")
    assert engine.extent(ds, small.path, small.version, small.size) is None
    assert engine.extent(ds, entry.path, "", entry.size) is None  # no version, no promise


def test_opening_a_huge_file_answers_at_once(engines, source):
    """An open asks for the file's extent under the engine's lock: a sparse file of 1 EiB has
    2**44 blocks of 64 KiB, and walking them held every reader of the node for hours."""
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    asked = threading.Thread(target=engine.extent, args=(ds, "huge", "v1", 1 << 60), daemon=True)
    asked.start()
    asked.join(5)
    assert not asked.is_alive()


def promoted_back(engines, source, tmp_path, mem_blocks: int):
    """b.bin cached in SSD by a node without MEM, then hit after MEM of `mem_blocks` was
    added: its blocks come back into MEM as block files; (engine, dataset id, entry)."""
    engine = engines(tiers=make_tiers(str(tmp_path), 1, 8, high=1.0)[1:])  # SSD only
    ds, entry = cached_whole(engine, source)
    assert {b.tier for b in engine.blocks(ds) if b.key.path == "data/b.bin"} == {"SSD"}
    engine.close()
    engine = engines(tiers=make_tiers(str(tmp_path), mem_blocks, 8, high=1.0))
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    for _ in range(2):
        assert read_all(engine, ds, source, "data/b.bin") == source.data("data/b.bin")
        engine.drain()
    return engine, ds, entry


def test_a_file_promoted_back_into_ram_is_compacted_into_one_extent(engines, source, tmp_path):
    engine, ds, entry = promoted_back(engines, source, tmp_path, 8)
    assert engine.extent(ds, entry.path, entry.version, entry.size) is None  # queues it
    engine.drain()
    path = engine.extent(ds, entry.path, entry.version, entry.size)
    with open(path, "rb") as f:
        assert f.read() == source.data("data/b.bin")
    stats = engine.statistics()
    assert stats.promotions == 3 and stats.extents_built == 1
    assert tier_files(engine.tiers[0]) == {path: entry.size}


def test_compaction_uses_free_room_only(engines, source, tmp_path):
    engine, ds, entry = promoted_back(engines, source, tmp_path, 3)  # b fills MEM exactly
    assert engine.extent(ds, entry.path, entry.version, entry.size) is None
    engine.drain()  # the compaction that call queued gave up too
    stats = engine.statistics()
    assert stats.extents_built == 0 and stats.evictions == stats.demotions == 0
    assert len(tier_files(engine.tiers[0])) == 3


def test_a_block_stored_again_gets_a_file_of_its_own_an_extent_is_written_once(engines,
                                                                             source):
    engine = engines()
    ds, entry = cached_whole(engine, source)
    path = engine.extent(ds, entry.path, entry.version, entry.size)
    before = os.stat(path)
    engine.report_corrupt(ds, entry.path, entry.version, 1)  # dropped: fetched again
    assert read_all(engine, ds, source, "data/b.bin") == source.data("data/b.bin")
    again = [b for b in engine.blocks(ds) if b.key.index == 1]
    assert [b.offset for b in again] == [0] and again[0].file != path
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns  # not written again


def test_an_extent_in_ram_is_trusted_after_a_restart_as_when_it_was_built(engines, source):
    """tmpfs cannot rot, and a power loss empties it: the restart does not read it again."""
    engine = engines()
    ds, entry = cached_whole(engine, source)
    path = engine.extent(ds, entry.path, entry.version, entry.size)
    engine.close()
    flip_a_byte(path, BS + 10)  # what only a deliberate write could do to a file in RAM
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    assert engine.extent(ds, entry.path, entry.version, entry.size) == path
    assert engine.statistics().checksum_failures == 0
    # A block read through the mount's ordinary path is still checked.
    assert read_all(engine, ds, source, "data/b.bin") == source.data("data/b.bin")
    assert engine.statistics().checksum_failures == 1


def test_in_memory_tells_the_filesystem_of_the_deepest_mount(tmp_path):
    mounts = tmp_path / "mountinfo"
    mounts.write_text("22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
                      "25 22 0:21 / /dev/shm rw,relatime - tmpfs tmpfs rw\n"
                      "31 25 254:16 / /dev/shm/disk\\040a rw - ext4 /dev/vdb rw\n"
                      "40 22 0:33 / /run/ram rw - ramfs none rw\n")
    assert in_memory("/dev/shm/eddy/mem", str(mounts))
    assert in_memory("/run/ram", str(mounts))
    assert not in_memory("/dev/shm/disk a/mem", str(mounts))  # \040 is a space
    assert not in_memory("/dev/shmx/mem", str(mounts))
    assert not in_memory("/var/lib/eddy", str(mounts))
    assert not in_memory("/dev/shm/eddy", str(tmp_path / "missing"))


def test_an_extent_frees_its_space_when_its_last_block_leaves(engines, source):
    engine = engines()
    ds, entry = cached_whole(engine, source)
    path = engine.extent(ds, entry.path, entry.version, entry.size)
    fd = os.open(path, os.O_RDONLY)  # as the kernel holds it after a passthrough open
    try:
        engine.open_dataset(make_spec(capacity=BS), {})  # evicts 2 of the 3 blocks
        stats = engine.statistics().tiers["MEM"]
        assert os.path.exists(path)
        assert (stats.used, stats.held, stats.reserved) == (BS, 2 * BS, 0)  # held until it goes
        assert engine.extent(ds, entry.path, entry.version, entry.size) is None
        engine.open_dataset(make_spec(capacity=0), {})
        stats = engine.statistics().tiers["MEM"]
        assert not os.path.exists(path) and stats.used == stats.held == stats.reserved == 0
        assert os.pread(fd, entry.size, 0) == source.data("data/b.bin")  # still the bytes
    finally:
        os.close(fd)


def test_watermarks_count_the_bytes_an_extent_holds_for_rows_gone(engines, source, tmp_path):
    # MEM: 4 blocks, high mark 2.8 blocks, low mark 2. The extent's rows cover 2 blocks, below
    # the high mark, but its file holds 3: demoting one more block would free nothing, so
    # maintenance demotes both, and the extent goes.
    engine = engines(tiers=make_tiers(str(tmp_path), 4, 8, high=0.7, low=0.5))
    ds, entry = cached_whole(engine, source)
    path = engine.extent(ds, entry.path, entry.version, entry.size)
    engine.open_dataset(make_spec(capacity=2 * BS), {})  # evicts block 0 (LRU): held
    stats = engine.statistics().tiers["MEM"]
    assert (stats.used, stats.held) == (2 * BS, BS) and os.path.exists(path)
    engine.maintain()
    stats = engine.statistics()
    assert (stats.tiers["MEM"].used, stats.tiers["MEM"].held) == (0, 0)
    assert not os.path.exists(path) and tier_files(engine.tiers[0]) == {}
    assert stats.demotions == 2 and stats.tiers["SSD"].used == 2 * BS
    assert read_all(engine, ds, source, "data/b.bin") == source.data("data/b.bin")


def test_a_restart_keeps_counting_the_bytes_an_extent_holds_for_rows_gone(engines, source):
    engine = engines()
    ds, entry = cached_whole(engine, source)
    engine.open_dataset(make_spec(capacity=BS), {})  # 2 of the 3 blocks leave the extent
    engine.close()
    engine = engines()
    stats = engine.statistics().tiers["MEM"]
    assert (stats.used, stats.held, stats.reserved) == (BS, 2 * BS, 0)
    assert sum(tier_files(engine.tiers[0]).values()) == 3 * BS


def test_a_block_moved_out_of_an_extent_reads_right_from_its_new_tier(engines, source,
                                                                      tmp_path):
    engine = engines(tiers=make_tiers(str(tmp_path), 4, 8))
    ds, entry = cached_whole(engine, source)
    read_all(engine, ds, source, "data/a.bin")  # 6 blocks: b's extent is pushed down to SSD
    engine.drain()
    assert {b.tier for b in engine.blocks(ds) if b.key.path == "data/b.bin"} == {"SSD"}
    reads = len(source.reads)
    assert read_all(engine, ds, source, "data/b.bin") == source.data("data/b.bin")
    assert len(source.reads) == reads


def test_an_index_from_before_extents_is_read_with_every_block_at_offset_zero(tmp_path):
    path = str(tmp_path / "index.db")
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE blocks (dataset_id TEXT NOT NULL, path TEXT NOT NULL,
            version TEXT NOT NULL, block INTEGER NOT NULL, tier TEXT NOT NULL,
            file TEXT NOT NULL, length INTEGER NOT NULL, checksum INTEGER NOT NULL,
            last_access INTEGER NOT NULL,
            PRIMARY KEY (dataset_id, path, version, block)) WITHOUT ROWID;
        INSERT INTO blocks VALUES ('d', 'p', 'v', 0, 'MEM', 'd/ab/f', 5, -1, 7);
    """)
    db.close()
    index = BlockIndex(path)
    try:
        [block] = index.load()
        assert (block.file, block.offset, block.length, block.seq) == ("d/ab/f", 0, 5, 7)
        assert block.checksum == (1 << 64) - 1
    finally:
        index.close()
