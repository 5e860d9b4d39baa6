"""Preload jobs against a counting fake source: complete, capacity, resume, cancel, scope."""

from __future__ import annotations

import threading

import pytest

from cache_engine.status import Phase
from cache_engine.types import JobState
from cache_engine.ufs.base import UfsUnavailable
from eddy.base.errors import NotFound
from tests.support.engine import BS, blob, make_spec, read_location
from tests.support.fake_source import FakeUfs


def preload(engine, ds, paths=(), workers=4, timeout=30.0):
    engine.preload(ds, tuple(paths), workers)
    assert engine.wait_preload(ds, timeout), "the preload did not finish"
    return engine.preload_progress(ds)


def cached_bytes(engine, ds) -> int:
    return sum(b.length for b in engine.blocks(ds))


def test_full_preload_caches_everything_and_reads_never_touch_the_source(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    p = preload(engine, ds)
    total = sum(len(source.data(f)) for f in ("data/a.bin", "data/b.bin", "small.txt"))
    assert p.state is JobState.COMPLETE and not p.listing
    assert (p.files_total, p.files_done) == (3, 3)
    assert p.bytes_total == p.bytes_cached == p.bytes_fetched == total == cached_bytes(engine, ds)
    before = len(source.reads)
    for path in ("data/a.bin", "data/b.bin", "small.txt"):
        entry = engine.stat(ds, path)
        got = b"".join(read_location(engine, ds, path, entry.version, i, entry.size)
                       for i in range(-(-entry.size // BS)))
        assert got == source.data(path)
    assert len(source.reads) == before


def test_a_dataset_larger_than_its_capacity_ends_capacity_reached_with_exact_bytes(engines):
    big = FakeUfs({f"part-{i}.bin": blob(4 * BS, seed=i) for i in range(4)})  # 16 blocks
    engine = engines(ufs=big)
    ds = engine.open_dataset(make_spec(capacity=6 * BS), {}).dataset_id
    p = preload(engine, ds)
    assert p.state is JobState.CAPACITY_REACHED
    assert "capacity" in p.message
    assert p.bytes_cached == cached_bytes(engine, ds) == 6 * BS
    assert p.bytes_cached < p.bytes_total
    assert engine.statistics().evictions == 0  # it stopped, it did not churn its own blocks


def test_a_second_preload_fetches_only_what_is_missing(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    first = preload(engine, ds, paths=["data/a.bin"])
    assert first.state is JobState.COMPLETE and first.files_total == 1
    source.reads.clear()
    second = preload(engine, ds)
    assert second.state is JobState.COMPLETE
    assert second.blocks_skipped == 6  # a.bin: 5 full blocks and a tail
    assert second.bytes_fetched == sum(n for _, _, n in source.reads)
    assert {path for path, _, _ in source.reads} == {"data/b.bin", "small.txt"}


def test_one_job_per_dataset_and_cancel(engines):
    slow = FakeUfs({f"f{i}.bin": blob(2 * BS, seed=i) for i in range(20)}, delay=0.05)
    engine = engines(ufs=slow)
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    first = engine.preload(ds, (), 1)
    again = engine.preload(ds, ("f1.bin",), 1)
    assert again.started == first.started and again.paths == ()
    ended = engine.cancel_preload(ds)  # returns once the job's workers stopped
    assert ended.state is JobState.CANCELLED and ended.finished is not None
    assert cached_bytes(engine, ds) < 40 * BS
    # Nothing runs on after the cancel: no preload worker is left to read.
    assert not [t for t in threading.enumerate() if t.name.startswith("preload")]


def test_paths_may_be_directories_files_or_name_prefixes(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id
    p = preload(engine, ds, paths=["data/b", "small.txt"])
    assert p.state is JobState.COMPLETE and p.files_total == 2
    assert {b.key.path for b in engine.blocks(ds)} == {"data/b.bin", "small.txt"}
    missing = preload(engine, ds, paths=["nope/"])
    assert missing.state is JobState.FAILED and "nope" in missing.message


def test_a_source_failure_fails_the_job_with_its_reason(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}).dataset_id

    def broken(path, offset, length, version=None):
        raise OSError(5, "disk on fire", path)

    source.read = broken
    p = preload(engine, ds)
    assert p.state is JobState.FAILED and "disk on fire" in p.message


def test_preload_of_an_unknown_dataset_is_refused(engines):
    with pytest.raises(NotFound):
        engines().preload("0" * 24)


def test_status_counts_each_cached_block_once_and_the_percentage_is_exact(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(), {}, volume_id="pvc-1").dataset_id
    [before] = engine.status(wait=None)
    assert before.phase is Phase.READY and before.cached_bytes == 0
    assert before.ufs_total_bytes == 8 * BS + 123 + 5 and before.ufs_files == 3
    preload(engine, ds, paths=["data/a.bin"])
    [row] = engine.status(wait=None)
    assert row.volumes == ("pvc-1",) and row.source == "local:///data"
    assert row.cached_bytes == 5 * BS + 123 == sum(row.tier_bytes.values())
    assert row.cached_percent == pytest.approx(100 * (5 * BS + 123) / (8 * BS + 128))
    assert sum(row.tier_bytes.values()) == cached_bytes(engine, ds)
    assert row.preload.state is JobState.COMPLETE


def test_status_shows_capacity_reached_and_an_unreachable_source(engines):
    big = FakeUfs({f"part-{i}.bin": blob(4 * BS, seed=i) for i in range(4)})
    engine = engines(ufs=big)
    ds = engine.open_dataset(make_spec(capacity=6 * BS), {}).dataset_id
    preload(engine, ds)
    [row] = engine.status(wait=None)
    assert row.phase is Phase.CAPACITY_REACHED and row.cached_bytes == 6 * BS
    assert row.capacity == 6 * BS and row.cached_percent == pytest.approx(100 * 6 / 16)

    def down(path):
        raise UfsUnavailable(f"connection refused listing {path!r}")

    big.list = down
    big.stat = down
    with pytest.raises(UfsUnavailable):
        engine.stat(ds, "part-9.bin")
    [row] = engine.status()
    assert row.phase is Phase.SOURCE_UNAVAILABLE and "connection refused" in row.message
