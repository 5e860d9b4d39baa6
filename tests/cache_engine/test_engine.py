"""The cache engine as the mount daemons see it, over a fake source that counts requests."""

from __future__ import annotations

import errno
import os
import random
import stat
import subprocess
import threading
import time

import pytest

from cache_engine.engine import CacheEngine
from cache_engine.statistics import DatasetStatistics, TierStatistics
from cache_engine.tiers import Tier
from eddy.base.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.support.engine import (
    BS,
    FakeClock,
    blob,
    make_spec,
    make_tiers,
    read_all,
    read_location,
)
from tests.support.fake_source import FakeUfs
from tests.support.wait import wait_for

CREDS = {"accessKeyId": "AKIAEXAMPLE", "secretAccessKey": "s3cr3t-value-never-logged"}


def test_hit_returns_the_tier_file_and_reads_the_source_once(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    assert read_all(engine, ds, source, "data/a.bin") == source.data("data/a.bin")
    reads = len(source.reads)
    entry = engine.stat(ds, "data/a.bin")
    loc = engine.locate(ds, "data/a.bin", entry.version, 5, entry.size)
    assert loc.data is None and loc.length == 123 and loc.file.startswith(str(engine.tiers[0].path))
    assert len(source.reads) == reads
    assert engine.statistics().hits >= 1


def test_locate_answers_for_the_cached_blocks_that_follow_up_to_a_gap(engines, source,
                                                                     tmp_path):
    engine = engines(tiers=make_tiers(str(tmp_path), 8))  # one tier: no block moves
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    entry = engine.stat(ds, "data/a.bin")  # 6 blocks
    for index in (0, 1, 2, 4, 5):  # block 3 is not cached
        read_location(engine, ds, entry.path, entry.version, index, entry.size)
    reads, hits = len(source.reads), engine.statistics().hits
    run = engine.locate(ds, entry.path, entry.version, 0, entry.size, following=5)
    assert [f.file for f in run.following] == [
        engine.locate(ds, entry.path, entry.version, i, entry.size).file for i in (1, 2)]
    assert engine.statistics().hits == hits + 3 + 2  # the run, then the two checks
    tail = engine.locate(ds, entry.path, entry.version, 4, entry.size, following=10)
    assert len(tail.following) == 1 and tail.following[0].length == 123  # ends at the file's end
    assert len(source.reads) == reads  # only cached blocks are answered for, none fetched


def test_concurrent_misses_of_one_block_read_the_source_once(engines):
    slow = FakeUfs({"big": blob(2 * BS)}, delay=0.2)
    engine = engines(ufs=slow)
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    version = slow.stat("big").version
    results, barrier = [], threading.Barrier(20)

    def reader():
        barrier.wait()
        results.append(read_location(engine, ds, "big", version, 1, 2 * BS))

    threads = [threading.Thread(target=reader) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(slow.reads) == 1
    assert results == [slow.data("big")[BS:]] * 20


def test_same_source_and_credentials_share_blocks_other_credentials_do_not(engines, source,
                                                                           tmp_path):
    engine = engines()
    first = engine.open_dataset(make_spec(readAhead="2"), CREDS)
    again = engine.open_dataset(make_spec(metadataTTL="5"), dict(CREDS))
    assert again.dataset_id == first.dataset_id and again.read_ahead == 0
    read_all(engine, first.dataset_id, source, "data/b.bin")
    reads = len(source.reads)
    assert read_all(engine, again.dataset_id, source, "data/b.bin") == source.data("data/b.bin")
    assert len(source.reads) == reads

    other = engine.open_dataset(make_spec(), {**CREDS, "secretAccessKey": "another"})
    anonymous = engine.open_dataset(make_spec(), {})
    assert len({first.dataset_id, other.dataset_id, anonymous.dataset_id}) == 3
    read_all(engine, other.dataset_id, source, "data/b.bin")
    assert len(source.reads) == reads + 3
    engine.close()
    for path in (tmp_path / "state").iterdir():
        assert b"s3cr3t-value" not in path.read_bytes()


def test_reopening_replaces_the_source_backend_and_closes_the_old_one(engines):
    old, new = FakeUfs({"f": b"x"}), FakeUfs({"f": b"x"})
    backends = iter([old, new])
    engine = engines(open_ufs=lambda spec, secrets: next(backends))
    ds = engine.open_dataset(make_spec(), CREDS).dataset_id
    engine.open_dataset(make_spec(), CREDS)
    assert old.closed and not new.closed
    engine.stat(ds, "f")
    assert new.requests == 1 and old.requests == 0


def test_unknown_dataset_and_unknown_tier_are_refused(engines):
    engine = engines()
    with pytest.raises(NotFound, match="not open on this node"):
        engine.locate("0123abcd", "a", "v", 0, 10)
    with pytest.raises(InvalidArgument, match=r"'NVME'.*MEM, SSD"):
        engine.open_dataset(make_spec(tiers="MEM,NVME"), {})


def test_block_beyond_the_end_of_the_file_is_refused(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    with pytest.raises(InvalidArgument, match="beyond the end"):
        engine.locate(ds, "small.txt", "v", 1, 5)


def test_cached_blocks_survive_a_restart(engines, source, tmp_path):
    engine = engines()
    ds = engine.open_dataset(make_spec(), CREDS).dataset_id
    read_all(engine, ds, source, "data/a.bin")
    engine.close()

    cold = FakeUfs({"data/a.bin": source.data("data/a.bin")})
    restarted = engines(ufs=cold)
    assert restarted.open_dataset(make_spec(), CREDS).dataset_id == ds
    entry = source.stat("data/a.bin")
    cached = restarted.statistics().datasets[ds].blocks
    assert cached == 6  # 5 full blocks and a tail fit MEM + SSD
    got = b"".join(read_location(restarted, ds, "data/a.bin", entry.version, i, entry.size)
                   for i in range(6))
    assert got == source.data("data/a.bin") and cold.reads == []


def test_a_second_engine_on_one_state_dir_is_refused(engines):
    engines()
    with pytest.raises(FailedPrecondition, match="another cache engine"):
        engines()


def test_state_files_are_private(engines, tmp_path):
    engines()
    for name in ("engine.key", "index.db"):
        mode = stat.S_IMODE(os.stat(tmp_path / "state" / name).st_mode)
        assert mode == 0o600, name
    assert len((tmp_path / "state" / "engine.key").read_bytes()) == 32


def test_restart_removes_torn_writes_orphans_and_rows_without_files(engines, source, tmp_path):
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    read_all(engine, ds, source, "data/a.bin")
    blocks = sorted(engine.blocks(ds), key=lambda b: b.key.index)
    engine.close()

    mem = engine.tiers[0]
    stray_tmp = os.path.join(mem.tmp_dir, "torn")
    with open(stray_tmp, "wb") as f:
        f.write(b"half a block")
    orphan = os.path.join(mem.blocks_dir, ds, "zz", "no-row")
    os.makedirs(os.path.dirname(orphan))
    with open(orphan, "wb") as f:
        f.write(b"x" * BS)
    os.unlink(blocks[0].file)  # a row whose file is gone
    with open(blocks[1].file, "r+b") as f:  # a row whose file is short
        f.truncate(100)

    restarted = engines()
    assert not os.path.exists(stray_tmp) and not os.path.exists(orphan)
    assert not os.path.exists(blocks[1].file)
    left = {b.key.index for b in restarted.blocks(ds)}
    assert left == {b.key.index for b in blocks[2:]}
    restarted.open_dataset(make_spec(), {})
    reads = len(source.reads)
    assert read_all(restarted, ds, source, "data/a.bin") == source.data("data/a.bin")
    assert len(source.reads) == reads + 2  # only the two lost blocks are fetched again


def test_corrupt_block_is_dropped_and_refetched(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    entry = engine.stat(ds, "data/b.bin")
    loc = engine.locate(ds, "data/b.bin", entry.version, 0, entry.size)
    with open(loc.file, "r+b") as f:
        f.write(b"\xff" * 16)
    data = read_location(engine, ds, "data/b.bin", entry.version, 0, entry.size)
    assert data == source.data("data/b.bin")[:BS]
    stats = engine.statistics()
    assert stats.checksum_failures == 1 and stats.source_reads == 2
    assert not os.path.exists(loc.file)


def test_demotion_drops_a_corrupt_block_instead_of_copying_it(engines, source, tmp_path):
    engine = engines(tiers=make_tiers(str(tmp_path), 2, 4, high=0.6, low=0.4))
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    entry = engine.stat(ds, "data/b.bin")
    first = engine.locate(ds, "data/b.bin", entry.version, 0, entry.size)
    engine.locate(ds, "data/b.bin", entry.version, 1, entry.size)
    with open(first.file, "r+b") as f:
        f.write(b"\x00" * 8)
    engine.maintain()  # MEM is above 60%: its LRU block (block 0) goes down
    assert engine.statistics().checksum_failures == 1
    assert [b.key.index for b in engine.blocks(ds)] == [1]


def test_tier_that_refuses_writes_serves_reads_uncached(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(tiers="MEM"), {}).dataset_id
    mem = engine.tiers[0]
    os.rmdir(mem.tmp_dir)
    blocker = os.path.join(mem.blocks_dir, ds)  # where the dataset's extents go
    for path in (mem.tmp_dir, blocker):
        with open(path, "w"):
            pass  # writes into tmp/ (block files) and blocks/DATASET/ (extents): ENOTDIR
    entry = engine.stat(ds, "data/b.bin")
    loc = engine.locate(ds, "data/b.bin", entry.version, 2, entry.size)
    assert loc.data == source.data("data/b.bin")[2 * BS:]
    stats = engine.statistics()
    assert stats.tier_write_failures == 1 and stats.uncached_reads == 1
    assert stats.tiers["MEM"] == TierStatistics(used=0, size=4 * BS, blocks=0, reserved=0, held=0,
                                                 served_bytes=0, in_service=False, faults=1)
    # Out of service, the tier is not tried again until a probe finds it working.
    assert engine.locate(ds, "data/b.bin", entry.version, 1, entry.size).data is not None
    engine.maintain()
    stats = engine.statistics()
    assert stats.tier_write_failures == 1 and stats.uncached_reads == 2
    assert not stats.tiers["MEM"].in_service
    os.unlink(mem.tmp_dir)
    os.unlink(blocker)
    engine.maintain()  # the probe makes tmp/ again and writes there
    assert engine.statistics().tiers["MEM"].in_service
    assert engine.locate(ds, "data/b.bin", entry.version, 0, entry.size).file is not None


def test_full_tmpfs_tier_serves_reads_uncached(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    try:
        big = FakeUfs({"f": blob(3 << 20)})
        tier = Tier("MEM", str(mnt / "mem"), 64 << 20)  # claims more than the mount holds
        engine = CacheEngine([tier], str(tmp_path / "state"), open_ufs=lambda s, x: big,
                             maintenance=False)
        try:
            ds = engine.open_dataset(make_spec(blockSize="1Mi"), {}).dataset_id
            version = big.stat("f").version
            got = [read_location(engine, ds, "f", version, i, 3 << 20) for i in range(3)]
            assert b"".join(got) == big.data("f")
            stats = engine.statistics()
            # The first failed write takes the tier out of service: no other is tried.
            assert stats.tier_write_failures == 1 and stats.uncached_reads == 3
            assert os.listdir(tier.tmp_dir) == []  # failed writes leave no tmp files
        finally:
            engine.close()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_block_larger_than_every_tier_is_served_uncached(engines, source, tmp_path):
    engine = engines(tiers=[Tier("MEM", str(tmp_path / "mem"), BS // 2)])
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    entry = engine.stat(ds, "data/b.bin")
    assert engine.locate(ds, "data/b.bin", entry.version, 0, entry.size).data is not None
    stats = engine.statistics()
    assert stats.uncached_reads == 1 and stats.tier_write_failures == 0


def test_dataset_capacity_evicts_its_own_least_recently_used_blocks(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(capacity=2 * BS), {}).dataset_id
    entry = engine.stat(ds, "data/a.bin")
    for i in (0, 1, 0, 2):  # block 1 is the least recently used when block 2 arrives
        read_location(engine, ds, "data/a.bin", entry.version, i, entry.size)
    assert sorted(b.key.index for b in engine.blocks(ds)) == [0, 2]
    stats = engine.statistics()
    assert stats.datasets[ds].used <= 2 * BS and stats.evictions == 1


def test_a_block_just_handed_out_is_not_evicted_before_its_reader_opens_it(engines, source):
    clock = FakeClock()
    engine = engines(clock=clock, pin_seconds=1.0)
    ds = engine.open_dataset(make_spec(capacity=BS), {}).dataset_id
    entry = engine.stat(ds, "data/a.bin")
    first = engine.locate(ds, "data/a.bin", entry.version, 0, entry.size)
    second = engine.locate(ds, "data/a.bin", entry.version, 1, entry.size)
    assert second.data == source.data("data/a.bin")[BS:2 * BS]  # no room: served inline
    assert os.path.exists(first.file)
    clock.advance(1.5)
    third = engine.locate(ds, "data/a.bin", entry.version, 1, entry.size)
    assert third.file is not None and not os.path.exists(first.file)
    assert engine.statistics().uncached_reads == 1


def test_lowering_the_capacity_on_reopen_evicts_down_to_it(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    read_all(engine, ds, source, "data/b.bin")
    engine.open_dataset(make_spec(capacity=BS), {})
    assert engine.statistics().datasets[ds].used <= BS


def test_full_fast_tier_demotes_lru_and_a_lower_hit_promotes(engines, source, tmp_path):
    engine = engines(tiers=make_tiers(str(tmp_path), 3, 4, high=0.9, low=0.4))
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    entry = engine.stat(ds, "data/a.bin")
    for i in (0, 1, 2, 1, 3):
        read_location(engine, ds, "data/a.bin", entry.version, i, entry.size)
    where = {b.key.index: b.tier for b in engine.blocks(ds)}
    assert where == {0: "SSD", 1: "MEM", 2: "MEM", 3: "MEM"}
    assert engine.statistics().demotions == 1
    engine.maintain()  # MEM is above 90%: down to 40% of 3 blocks, i.e. one block
    where = {b.key.index: b.tier for b in engine.blocks(ds)}
    assert where == {0: "SSD", 1: "SSD", 2: "SSD", 3: "MEM"}
    read_location(engine, ds, "data/a.bin", entry.version, 0, entry.size)
    engine.drain()
    where = {b.key.index: b.tier for b in engine.blocks(ds)}
    assert where == {0: "MEM", 1: "SSD", 2: "SSD", 3: "MEM"}
    assert engine.statistics().promotions == 1


def test_metadata_is_cached_for_the_ttl_and_new_versions_never_serve_old_bytes(engines):
    clock = FakeClock()
    src = FakeUfs({"d/f": blob(BS + 10)})
    engine = engines(ufs=src, clock=clock)
    ds = engine.open_dataset(make_spec(metadataTTL="30"), {}).dataset_id
    engine.list(ds, "d")  # also fills the stat cache
    old = engine.stat(ds, "d/f")
    assert src.requests == 1
    old_bytes = read_location(engine, ds, "d/f", old.version, 0, old.size)
    src.set("d/f", blob(BS + 10, seed=9))
    clock.advance(29)
    assert engine.stat(ds, "d/f") == old
    clock.advance(2)
    new = engine.stat(ds, "d/f")
    assert new.version != old.version
    new_bytes = read_location(engine, ds, "d/f", new.version, 0, new.size)
    assert new_bytes == src.data("d/f")[:BS] != old_bytes


def test_immutable_dataset_metadata_never_expires(engines):
    clock = FakeClock()
    src = FakeUfs({"f": b"one"})
    engine = engines(ufs=src, clock=clock)
    ds = engine.open_dataset(make_spec(metadataTTL="immutable"), {}).dataset_id
    first = engine.stat(ds, "f")
    src.set("f", b"two")
    clock.advance(10**9)
    assert engine.stat(ds, "f") == first


def test_sequential_reads_prefetch_the_next_blocks(engines):
    src = FakeUfs({"f": blob(10 * BS)})
    engine = engines(ufs=src)
    ds = engine.open_dataset(make_spec(readAhead="3"), {}).dataset_id
    version = src.stat("f").version
    engine.locate(ds, "f", version, 0, 10 * BS)
    engine.locate(ds, "f", version, 1, 10 * BS)
    engine.drain()
    assert sorted(b.key.index for b in engine.blocks(ds)) == [0, 1, 2, 3, 4]
    assert engine.statistics().prefetches == 3
    assert read_location(engine, ds, "f", version, 3, 10 * BS) == src.data("f")[3 * BS:4 * BS]


def test_overlapping_read_ahead_windows_queue_each_block_once(engines):
    src = FakeUfs({"f": blob(8 * BS)}, delay=0.1)
    engine = engines(ufs=src, prefetch_workers=1)  # jobs wait in the queue
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    version = src.stat("f").version
    assert engine.prefetch(ds, "f", version, 8 * BS, 0, 4) == 4
    assert engine.prefetch(ds, "f", version, 8 * BS, 2, 4) == 2  # blocks 4 and 5 are new
    engine.drain()
    assert engine.statistics().prefetches == 6 and len(src.reads) == 6


def test_files_read_in_listing_order_prefetch_the_next_files(engines):
    src = FakeUfs({f"tok/{i:02d}.json": blob(100 + i, seed=i) for i in range(20)})
    engine = engines(ufs=src)
    ds = engine.open_dataset(make_spec(readAhead="4"), {}).dataset_id
    files = engine.list(ds, "tok")  # the listing a mount daemon asked for
    for entry in files[:2]:
        read_location(engine, ds, entry.path, entry.version, 0, entry.size)
    engine.drain()
    assert sorted(b.key.path for b in engine.blocks(ds)) == [e.path for e in files[:6]]
    reads = len(src.reads)
    for entry in files[2:6]:  # the scan goes on: these are cached already
        assert read_location(engine, ds, entry.path, entry.version, 0, entry.size) == \
            src.data(entry.path)
    engine.drain()
    assert len(src.reads) == reads + 4  # each hit moved the window on by one file
    assert sorted(b.key.path for b in engine.blocks(ds)) == [e.path for e in files[:10]]


def test_a_scan_goes_on_after_the_next_files_a_locate_answered_for(engines):
    """A reader handed the next files' locations reads them without asking the engine; the
    file after them still continues the scan."""
    src = FakeUfs({f"tok/{i:02d}.json": blob(100 + i, seed=i) for i in range(12)})
    engine = engines(ufs=src)
    ds = engine.open_dataset(make_spec(readAhead="4"), {}).dataset_id
    files = engine.list(ds, "tok")
    for entry in files[:2]:  # the scan starts; files 2-5 are fetched ahead
        read_location(engine, ds, entry.path, entry.version, 0, entry.size)
    engine.drain()
    third = files[2]
    loc = engine.locate(ds, third.path, third.version, 0, third.size, next_files=2)
    assert [path for path, _, _ in loc.next_files] == [e.path for e in files[3:5]]
    engine.drain()
    sixth = files[5]  # files 3 and 4 were read from the answer above; 6 is cached ahead
    loc = engine.locate(ds, sixth.path, sixth.version, 0, sixth.size, next_files=2)
    assert [path for path, _, _ in loc.next_files] == [files[6].path]


def test_files_read_out_of_order_or_unlisted_prefetch_nothing(engines):
    src = FakeUfs({f"tok/{i:02d}.json": blob(100 + i, seed=i) for i in range(20)})
    engine = engines(ufs=src)
    ds = engine.open_dataset(make_spec(readAhead="4"), {}).dataset_id
    entries = {e.path: e for e in (src.stat(f"tok/{i:02d}.json") for i in range(20))}
    for i in (0, 1, 2):  # in order, but nobody listed the directory
        e = entries[f"tok/{i:02d}.json"]
        read_location(engine, ds, e.path, e.version, 0, e.size)
    files = engine.list(ds, "tok")
    for i in (9, 4, 15, 11):  # listed, read out of order
        read_location(engine, ds, files[i].path, files[i].version, 0, files[i].size)
    engine.drain()
    assert len(engine.blocks(ds)) == 7 and len(src.reads) == 7


def test_random_reads_do_not_prefetch(engines):
    src = FakeUfs({"f": blob(10 * BS)})
    engine = engines(ufs=src)
    ds = engine.open_dataset(make_spec(readAhead="3"), {}).dataset_id
    version = src.stat("f").version
    for i in (5, 1, 8, 3):
        engine.locate(ds, "f", version, i, 10 * BS)
    engine.drain()
    assert sorted(b.key.index for b in engine.blocks(ds)) == [1, 3, 5, 8]
    assert len(src.reads) == 4


def test_prefetch_loads_a_range_in_the_background(engines):
    src = FakeUfs({"f": blob(6 * BS)})
    engine = engines(ufs=src)
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    version = src.stat("f").version
    assert engine.prefetch(ds, "f", version, 6 * BS, 2, 10) == 4
    engine.drain()
    assert sorted(b.key.index for b in engine.blocks(ds)) == [2, 3, 4, 5]
    assert engine.prefetch(ds, "f", version, 6 * BS, 2, 10) == 0


def test_a_failed_read_ahead_fails_its_waiters_and_leaves_nothing_in_flight(engines):
    class Broken(FakeUfs):
        def read(self, path, offset, length, version=None):
            with self._lock:
                self.reads.append((path, offset, length))
            time.sleep(0.3)
            raise OSError(errno.EIO, "the source broke")

    src = Broken({"f": blob(4 * BS)})
    engine = engines(ufs=src)
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    version = src.stat("f").version
    assert engine.prefetch(ds, "f", version, 4 * BS, 0, 4) == 4
    wait_for(lambda: len(src.reads) == 4, 10, "the read-ahead requests to reach the source")
    with pytest.raises(OSError, match="broke"):  # a reader of block 2 waits for it, gets its error
        engine.locate(ds, "f", version, 2, 4 * BS)
    assert sorted(src.reads) == [("f", i * BS, BS) for i in range(4)]  # no second request
    engine.drain()
    with pytest.raises(OSError, match="broke"):  # nothing was left in flight: the source is asked
        engine.locate(ds, "f", version, 2, 4 * BS)
    assert src.reads.count(("f", 2 * BS, BS)) == 2
    engine.drain()
    assert engine.blocks(ds) == []


def test_statistics_report_tiers_datasets_and_counters(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(capacity=3 * BS), {}).dataset_id
    read_all(engine, ds, source, "data/b.bin")
    stats = engine.statistics()
    assert stats.tiers["MEM"].used + stats.tiers["SSD"].used == 3 * BS
    assert stats.datasets[ds] == DatasetStatistics(used=3 * BS, capacity=3 * BS, blocks=3,
                                                   open=True)
    assert stats.misses == 3 and stats.source_bytes == 3 * BS


def test_limits_hold_under_concurrent_readers_and_maintenance(engines, tmp_path):
    files = {f"f{i}": blob(6 * BS + i, seed=i) for i in range(6)}
    src = FakeUfs(files, delay=0.001)
    engine = engines(ufs=src, tiers=make_tiers(str(tmp_path), 3, 5, high=0.7, low=0.4),
                     maintenance=True, maintenance_interval=0.005, prefetch_workers=3,
                     pin_seconds=0.05)  # long enough for a reader to open, short for churn
    shared = engine.open_dataset(make_spec(readAhead="2"), {}).dataset_id
    capped = engine.open_dataset(make_spec(capacity=2 * BS, tiers="SSD"), CREDS).dataset_id
    caps = {capped: 2 * BS}
    stop, errors, samples = threading.Event(), [], [0]

    def reader(seed):
        rnd = random.Random(seed)
        try:
            while not stop.is_set():
                ds = rnd.choice((shared, capped))
                name = rnd.choice(sorted(files))
                entry = engine.stat(ds, name)
                i = rnd.randrange(-(-entry.size // BS)) if rnd.random() < 0.5 else 0
                got = read_location(engine, ds, name, entry.version, i, entry.size)
                assert got == files[name][i * BS:(i + 1) * BS]
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    def sampler():
        while not stop.is_set():
            stats = engine.statistics()
            for tier in engine.tiers:
                t = stats.tiers[tier.name]
                if t.used + t.held + t.reserved > tier.size:
                    errors.append(AssertionError(f"{tier.name} over its size: {t}"))
            for ds, cap in caps.items():
                if (stats.datasets[ds].used if ds in stats.datasets else 0) > cap:
                    errors.append(AssertionError(f"dataset over capacity: {stats}"))
            samples[0] += 1
            time.sleep(0.0005)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(6)]
    threads.append(threading.Thread(target=sampler))
    for t in threads:
        t.start()
    stop.wait(3.0)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    engine.close()  # stops maintenance, which would otherwise race the walk below
    stats = engine.statistics()
    assert samples[0] > 100 and stats.demotions and stats.evictions, str(stats)[-400:]
    for tier in engine.tiers:
        on_disk = sum(os.path.getsize(os.path.join(d, f))
                      for d, _, names in os.walk(tier.path) for f in names)
        t = stats.tiers[tier.name]
        assert on_disk == t.used + t.held <= tier.size and t.reserved == 0


def test_a_tier_path_that_is_a_file_is_refused_at_start(tmp_path):
    (tmp_path / "mem").write_bytes(b"not a directory")
    with pytest.raises(FailedPrecondition, match=r"tier MEM: cannot use .*mem"):
        CacheEngine([Tier("MEM", str(tmp_path / "mem"), 4 * BS)], str(tmp_path / "state"),
                    maintenance=False)
    CacheEngine([], str(tmp_path / "state"), maintenance=False).close()  # lock released
