"""Extents on disk tiers: handed to the kernel only while a recent check vouches for them.

The rule (cache_engine/scrub.py): an extent's first write dates its check; the kernel gets it
while that check is at most `trust` seconds old; the scrubber reads it back once the check is
trust / 2 old, repairs a bad block from the source, or truncates the extent and drops its
blocks when the source cannot give the same bytes. A fake clock drives the ages here;
`engine.maintain()` runs the scrubs that are due, as the scrubber's thread does.
"""

from __future__ import annotations

import os
import time

import pytest

from cache_engine.scrub import ScrubPolicy
from tests.support.engine import BS, FakeClock, make_spec, read_all
from tests.support.tiers import flip_a_byte

TRUST = 100.0


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def engines(engines, clock):
    """Engines whose tiers are disk tiers, on a fake clock, with no scrubber thread."""
    return lambda **kw: engines(**{"held_in_ram": lambda path: False, "clock": clock,
                                   "scrub": ScrubPolicy(TRUST, 1 << 30), **kw})


def cached(engine, source, path="data/b.bin"):
    """Read `path` through the engine (cold: it grows in one extent); (dataset, entry, extent)."""
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    assert read_all(engine, ds, source, path) == source.data(path)
    entry = engine.stat(ds, path)
    return ds, entry, engine.extent(ds, entry.path, entry.version, entry.size)


def test_a_disk_extent_is_handed_out_only_while_its_last_check_is_recent(engines, source,
                                                                        clock):
    engine = engines()
    ds, entry, path = cached(engine, source)
    assert path is not None and os.path.getsize(path) == entry.size  # written, so checked
    with open(path, "rb") as f:
        assert f.read() == source.data("data/b.bin")
    clock.advance(TRUST / 2)
    engine.maintain()  # due: read back, all good, checked again now
    assert engine.statistics().extents_checked == 1
    clock.advance(TRUST / 2 + 1)
    assert engine.extent(ds, entry.path, entry.version, entry.size) == path  # checked at 50
    clock.advance(TRUST / 2)
    assert engine.extent(ds, entry.path, entry.version, entry.size) is None  # past trust
    assert engine.statistics().extents_overdue == 1
    engine.maintain()
    assert engine.extent(ds, entry.path, entry.version, entry.size) == path
    stats = engine.statistics()
    assert (stats.extents_checked, stats.extents_overdue, stats.extent_repairs) == (2, 0, 0)


def test_a_byte_flipped_on_disk_is_rewritten_from_the_source_at_the_next_scrub(
        engines, source, clock):
    engine = engines()
    ds, entry, path = cached(engine, source)
    want = source.data("data/b.bin")
    with open(path, "rb") as held:  # a file the kernel holds open: passthrough reads this
        flip_a_byte(path, BS + 10)
        assert os.pread(held.fileno(), entry.size, 0) != want  # unchecked: the bad byte
        clock.advance(TRUST / 2)
        engine.maintain()
        assert os.pread(held.fileno(), entry.size, 0) == want  # repaired in place
    stats = engine.statistics()
    assert (stats.extent_repairs, stats.extent_failures) == (1, 0)
    assert engine.extent(ds, entry.path, entry.version, entry.size) == path
    assert read_all(engine, ds, source, "data/b.bin") == want
    assert engine.statistics().checksum_failures == 0


@pytest.mark.expect_error_log("scrub.extent_dropped")
def test_an_extent_the_source_cannot_repair_is_truncated_and_its_blocks_dropped(
        engines, source, clock):
    engine = engines()
    ds, entry, path = cached(engine, source)
    with open(path, "rb") as held:
        flip_a_byte(path, 2 * BS + 5)
        source.change("data/b.bin", b"new" * BS)  # the cached version is gone at the source
        clock.advance(TRUST / 2)
        engine.maintain()
        assert os.pread(held.fileno(), entry.size, 0) == b""  # ends early: no bad byte
    stats = engine.statistics()
    assert (stats.extent_repairs, stats.extent_failures) == (0, 1)
    assert engine.blocks(ds) == [] and not os.path.exists(path)
    assert engine.extent(ds, entry.path, entry.version, entry.size) is None
    engine.maintain()  # nothing left to check
    assert engine.statistics().extents_checked == 1


def test_a_check_outlives_a_restart_on_the_extent_file(engines, source, clock):
    engine = engines()
    ds, entry, path = cached(engine, source)
    engine.close()
    engine = engines()  # a fresh mount of `eddy mount` restarts its engine like this
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    assert engine.extent(ds, entry.path, entry.version, entry.size) == path  # at once
    clock.advance(TRUST / 2)
    engine.maintain()  # due as it would have been without the restart
    assert engine.statistics().extents_checked == 1
    engine.close()
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    clock.advance(TRUST / 2 + 1)  # the scrub's check, not the first write, dates it now
    assert engine.extent(ds, entry.path, entry.version, entry.size) == path
    clock.advance(TRUST / 2)
    assert engine.extent(ds, entry.path, entry.version, entry.size) is None


def test_after_a_restart_an_extent_written_since_its_check_waits_for_a_scrub(engines, source,
                                                                            clock):
    engine = engines()
    ds, entry, path = cached(engine, source)
    engine.close()
    flip_a_byte(path, 10)  # while no engine ran: its mtime moves, its stamp no longer holds
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    assert engine.extent(ds, entry.path, entry.version, entry.size) is None  # never checked
    assert engine.statistics().extents_overdue == 1
    engine.maintain()
    assert engine.statistics().extent_repairs == 1
    assert engine.extent(ds, entry.path, entry.version, entry.size) == path
    with open(path, "rb") as f:
        assert f.read() == source.data("data/b.bin")


def test_the_scrubber_reads_no_faster_than_its_rate(engines, source, clock):
    engine = engines(scrub=ScrubPolicy(TRUST, 2 * BS))  # two blocks a second
    cached(engine, source)  # three blocks
    clock.advance(TRUST / 2)
    start = time.monotonic()
    engine.maintain()
    assert time.monotonic() - start >= 1.4  # paced after each block: 1.5 s at least
    assert engine.statistics().extents_checked == 1


def test_a_trust_of_zero_hands_out_no_disk_extent_and_scrubs_none(engines, source, clock):
    engine = engines(scrub=ScrubPolicy(0, 1 << 30))  # --extent-trust 0
    ds, entry, path = cached(engine, source)
    assert path is None  # every read of the file stays checked, block by block
    clock.advance(TRUST)
    engine.maintain()
    stats = engine.statistics()
    assert (stats.extents_checked, stats.extents_overdue, stats.extents_served) == (0, 0, 0)
    assert read_all(engine, ds, source, "data/b.bin") == source.data("data/b.bin")


def test_a_bad_block_a_reader_drops_is_still_mended_for_a_file_held_open(engines, source,
                                                                        clock):
    """The reader's path drops the bad block and fetches it anew elsewhere; the kernel still
    reads the old bytes through an open passthrough file, so the scrub mends them at once."""
    engine = engines()
    ds, entry, path = cached(engine, source)
    want = source.data("data/b.bin")
    with open(path, "rb") as held:
        flip_a_byte(path, BS + 10)
        assert read_all(engine, ds, source, "data/b.bin") == want  # found, dropped, refetched
        assert engine.statistics().checksum_failures == 1
        assert engine.extent(ds, entry.path, entry.version, entry.size) is None
        assert os.pread(held.fileno(), entry.size, 0) != want
        engine.maintain()  # due at once, though its check is recent
        assert os.pread(held.fileno(), entry.size, 0) == want
    assert engine.statistics().extent_repairs == 1
