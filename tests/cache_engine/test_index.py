"""The block index when SQLite fails: a full state disk, a corrupt index.db.

Neither ever fails a read: blocks are served from the source (uncached while the index cannot
record them), an engine that starts on a full state disk keeps its index in memory, and a
corrupt index is moved aside at start, its tier files freed.
"""

from __future__ import annotations

import glob
import os

import pytest

from cache_engine.reader import DatasetReader
from tests.support.engine import BS, make_spec, make_tiers
from tests.support.mounts import fill
from tests.support.tiers import tier_bytes, tier_files


def read_through(engine, path: str) -> bytes:
    """Read a whole file through a fresh DatasetReader, as a mount does."""
    reader = DatasetReader(engine, make_spec(), {})
    try:
        entry = reader.stat(path)
        return bytes(reader.read(path, 0, entry.size, entry.version))
    finally:
        reader.close()


def test_a_full_state_disk_serves_reads_uncached(tmpfs, engines, source, tmp_path):
    tmpfs.mount(tmp_path / "state", "1m")
    engine = engines()
    filler = fill(tmp_path / "state")
    for _ in range(2):
        assert read_through(engine, "data/a.bin") == source.data("data/a.bin")
    stats = engine.statistics()
    assert stats.index_write_failures >= 1 and stats.uncached_reads >= 6
    assert stats.tiers["MEM"].blocks + stats.tiers["SSD"].blocks == 0
    assert tier_files(tmp_path / "mem") == tier_files(tmp_path / "ssd") == []

    os.unlink(filler)  # room again: the next blocks are cached
    assert read_through(engine, "data/b.bin") == source.data("data/b.bin")
    assert engine.statistics().tiers["MEM"].blocks == 3


def test_an_engine_starting_on_a_full_state_disk_keeps_its_index_in_memory(
        tmpfs, engines, source, tmp_path):
    tmpfs.mount(tmp_path / "state", "1m")
    tiers = make_tiers(str(tmp_path), 16, 16)  # room for all: no block moves between tiers
    engine = engines(tiers)
    assert read_through(engine, "data/b.bin") == source.data("data/b.bin")  # 3 blocks
    engine.close()
    filler = fill(tmp_path / "state")
    reads = len(source.reads)

    engine = engines(tiers)  # SQLite cannot open the index for writing: it is copied into memory
    stats = engine.statistics()
    assert stats.index_in_memory and stats.tiers["MEM"].blocks == 3
    assert read_through(engine, "data/b.bin") == source.data("data/b.bin")
    assert len(source.reads) == reads  # what was cached before still hits
    assert read_through(engine, "data/a.bin") == source.data("data/a.bin")
    assert read_through(engine, "data/a.bin") == source.data("data/a.bin")
    assert len(source.reads) == reads + 6  # and new blocks are cached (6 of a.bin, once)
    assert engine.statistics().index_write_failures == 0
    engine.close()

    os.unlink(filler)
    engine = engines(tiers)  # the disk's index never heard of a.bin's blocks: they are freed
    stats = engine.statistics()
    assert not stats.index_in_memory
    assert stats.tiers["MEM"].blocks + stats.tiers["SSD"].blocks == 3
    assert tier_bytes(tmp_path / "mem") + tier_bytes(tmp_path / "ssd") == 3 * BS  # b.bin's


def test_an_engine_starts_on_a_full_state_disk_with_no_state_at_all(tmpfs, engines, source,
                                                                    tmp_path):
    tmpfs.mount(tmp_path / "state", "1m")
    fill(tmp_path / "state")
    engine = engines()  # no room for the node key or the index: both kept in memory
    assert engine.statistics().index_in_memory
    for _ in range(2):
        assert read_through(engine, "data/a.bin") == source.data("data/a.bin")
    assert engine.statistics().hits >= 6


def damage_a_page(path: str) -> None:
    """Overwrite the index's second page (a table's root) with garbage; the header stays."""
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(b"\xa5" * 4096)


@pytest.mark.parametrize("damage", ["garbage", "page"])
def test_a_corrupt_index_is_moved_aside_and_its_blocks_freed(engines, source, tmp_path,
                                                            damage):
    engine = engines()
    assert read_through(engine, "data/a.bin") == source.data("data/a.bin")
    assert read_through(engine, "data/b.bin") == source.data("data/b.bin")
    cached = tier_bytes(tmp_path / "mem") + tier_bytes(tmp_path / "ssd")
    assert cached == len(source.data("data/a.bin")) + len(source.data("data/b.bin"))
    engine.close()
    index = str(tmp_path / "state" / "index.db")
    assert not os.path.exists(index + "-wal")  # a clean close leaves the index whole
    if damage == "garbage":
        with open(index, "wb") as f:
            f.write(os.urandom(3 * 4096))
    else:
        damage_a_page(index)
    reads = len(source.reads)

    engine = engines()
    [aside] = glob.glob(index + ".corrupt-*")
    assert os.path.getsize(aside) >= 3 * 4096 and os.path.exists(index)
    stats = engine.statistics()
    assert stats.tiers["MEM"].blocks == stats.tiers["SSD"].blocks == 0
    # Block file names hash their keys: no row can be rebuilt, so the bytes are freed.
    assert tier_files(tmp_path / "mem") == tier_files(tmp_path / "ssd") == []
    assert read_through(engine, "data/b.bin") == source.data("data/b.bin")
    assert len(source.reads) == reads + 3
    engine.close()
    assert engines().statistics().tiers["MEM"].blocks == 3  # the new index holds
