"""DatasetReader: a dataset read through the cache engine, the way a mount daemon reads it.

Reads go either through `read` (may locate, pread and check blocks) or through the
non-blocking `read_cached` that the mount's event loop tries first; both must only ever
return the source's bytes.
"""

from __future__ import annotations

import os
import random
import threading

import pytest

from cache_engine import reader as readermod
from cache_engine.reader import DatasetReader
from tests.support.engine import BS, blob, make_spec
from tests.support.fake_source import FakeUfs


@pytest.fixture
def readers(engines):
    """Make DatasetReaders (over a fresh engine unless one is given); closed at the end."""
    made = []

    def make(engine=None, **kw):
        reader = DatasetReader(engine or engines(), make_spec(), {}, **kw)
        made.append(reader)
        return reader

    yield make
    for reader in made:
        reader.close()


class CountingLocates:
    """An engine whose `locate` calls are recorded in `calls` (each one a round trip when the
    engine is across a socket)."""

    def __init__(self, engine):
        self.engine = engine
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def locate(self, *args):
        self.calls.append(args)
        return self.engine.locate(*args)


class CountingStats:
    """An engine whose `stat_fresh` calls are counted in `stats`."""

    def __init__(self, engine):
        self.engine = engine
        self.stats = 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def stat_fresh(self, *args):
        self.stats += 1
        return self.engine.stat_fresh(*args)


def read_like_a_mount(reader, path: str, version: str, offset: int, length: int) -> bytes:
    """What DatasetFs does: the in-memory answer if there is one, else a (blocking) read."""
    data = reader.read_cached(path, offset, length, version)
    if data is None:
        data = reader.read(path, offset, length, version)
    return bytes(data)


@pytest.mark.parametrize("step", [BS // 3, BS, BS + 1000, 3 * BS])
def test_reads_of_any_size_return_the_source_bytes(readers, source, step):
    reader = readers()
    entry = reader.stat("data/a.bin")  # 5 blocks and 123 bytes
    want = source.data("data/a.bin")
    for _pass in range(2):  # loading blocks, then all of them in memory
        got = b"".join(read_like_a_mount(reader, entry.path, entry.version, off, step)
                       for off in range(0, entry.size, step))
        assert got == want
    for offset, length in ((BS - 10, 20), (BS // 2, 3 * BS), (5 * BS + 100, 1000)):
        cached = reader.read_cached(entry.path, offset, length, entry.version)
        assert cached is not None and bytes(cached) == want[offset:offset + length]
    assert reader.read_cached(entry.path, entry.size, 10, entry.version) == b""


def test_read_cached_answers_only_from_blocks_already_checked(readers, source):
    reader = readers()
    entry = reader.stat("data/b.bin")
    want = source.data("data/b.bin")
    assert reader.read_cached(entry.path, BS, 100, entry.version) is None  # not loaded yet
    assert bytes(reader.read(entry.path, BS, 100, entry.version)) == want[BS:BS + 100]
    assert bytes(reader.read_cached(entry.path, BS + 5, 10, entry.version)) == \
        want[BS + 5:BS + 15]
    # another version, or none (only `read` can resolve it), is never answered from memory
    assert reader.read_cached(entry.path, BS, 100, "other-version") is None
    assert reader.read_cached(entry.path, BS, 100, None) is None
    # a range reaching into a block that is not loaded is not answered either: block 0 (the
    # reads above may have started loading block 2 ahead, never a block behind them)
    assert reader.read_cached(entry.path, BS - 10, 20, entry.version) is None


def test_a_corrupt_tier_file_is_never_served(engines, readers, source):
    engine = engines()
    reader = readers(engine)
    entry = reader.stat("data/b.bin")
    want = source.data("data/b.bin")[BS:2 * BS]
    loc = engine.locate(reader.info.dataset_id, entry.path, entry.version, 1, entry.size)
    with open(loc.file, "r+b") as f:
        f.seek(loc.offset)  # the block's bytes in its extent
        f.write(b"\xff" * 16)
    assert reader.read_cached(entry.path, BS, BS, entry.version) is None
    assert bytes(reader.read(entry.path, BS, BS, entry.version)) == want
    assert engine.statistics().checksum_failures == 1
    # The checked copy in memory is what the fast path serves, whatever happens to the file
    # afterwards; a reader that has not checked the block yet detects the damage itself.
    refetched = engine.locate(reader.info.dataset_id, entry.path, entry.version, 1, entry.size)
    with open(refetched.file, "r+b") as f:
        f.seek(refetched.offset)
        f.write(b"\x00" * 16)
    assert bytes(reader.read_cached(entry.path, BS, BS, entry.version)) == want
    fresh = readers(engine)
    assert fresh.read_cached(entry.path, BS, BS, entry.version) is None
    assert read_like_a_mount(fresh, entry.path, entry.version, BS, BS) == want
    assert engine.statistics().checksum_failures == 2


@pytest.mark.parametrize("damage", ["deleted", "truncated", "overwritten"])
def test_a_tier_file_damaged_behind_the_engine_is_fetched_again(engines, readers, source,
                                                                 damage):
    """An admin clears /dev/shm, a disk loses a file's tail or rots: the read still gets the
    source's bytes, reading the source once more for that block only."""
    engine = engines()
    reader = readers(engine)
    entry = reader.stat("data/b.bin")
    want = source.data("data/b.bin")
    loc = engine.locate(reader.info.dataset_id, entry.path, entry.version, 1, entry.size)
    if damage == "deleted":
        os.unlink(loc.file)
    elif damage == "truncated":
        os.truncate(loc.file, BS // 2)
    else:
        with open(loc.file, "r+b") as f:
            f.seek(loc.offset)
            f.write(os.urandom(BS))
    fetches = [r for r in source.reads if r[1] == BS]
    assert bytes(reader.read(entry.path, BS, BS, entry.version)) == want[BS:2 * BS]
    assert [r for r in source.reads if r[1] == BS] == fetches * 2
    stats = engine.statistics()
    assert stats.checksum_failures == 1 and stats.source_reads == 2
    assert read_like_a_mount(readers(engine), entry.path, entry.version, 0, entry.size) == want


def test_read_cached_never_waits_for_a_busy_reader(readers):
    """It runs on the mount's event loop: a lock held by a loading thread means "use read"."""
    reader = readers()
    entry = reader.stat("data/b.bin")
    reader.read(entry.path, 0, 10, entry.version)
    assert reader.read_cached(entry.path, 0, 10, entry.version) is not None
    with reader._lock:
        assert reader.read_cached(entry.path, 0, 10, entry.version) is None


def test_concurrent_readers_get_the_source_bytes_while_blocks_are_dropped(
        engines, readers, source):
    reader = readers(recent_bytes=2 * BS)  # keep 2 blocks: churn
    files = {path: (reader.stat(path), source.data(path)) for path in ("data/a.bin", "data/b.bin")}
    failures = []

    def read_randomly(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(200):
            entry, want = files[rnd.choice(sorted(files))]
            offset = rnd.randrange(entry.size)
            length = rnd.randrange(1, 2 * BS)
            try:
                got = read_like_a_mount(reader, entry.path, entry.version, offset, length)
            except Exception as e:  # noqa: BLE001 - a thread's error must fail the test
                failures.append((entry.path, offset, length, repr(e)))
                continue
            if got != want[offset:offset + length]:
                failures.append((entry.path, offset, length, "wrong bytes"))

    threads = [threading.Thread(target=read_randomly, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_a_folder_read_in_listing_order_locates_several_files_per_engine_call(engines, readers):
    """A tokenizer or `find | xargs cat`: small files, one after the other, all cached."""
    src = FakeUfs({f"tok/{i:02d}.json": blob(300 + i, seed=i) for i in range(24)})
    engine = engines(ufs=src)

    def read_folder(reader) -> list[bytes]:
        return [read_like_a_mount(reader, e.path, e.version, 0, e.size)
                for e in reader.list("tok")]

    assert read_folder(readers(engine)) == [src.data(f"tok/{i:02d}.json") for i in range(24)]
    engine.drain()

    counting = CountingLocates(engine)
    assert read_folder(readers(counting)) == [src.data(f"tok/{i:02d}.json") for i in range(24)]
    # files 0 and 1 start the scan; from then on one call answers for the next 8 files
    assert len(counting.calls) <= 2 + 24 // readermod.LOCATE_RUN + 1, \
        [c[1] for c in counting.calls]


def test_a_sequential_reader_locates_several_blocks_per_engine_call(
        engines, readers, source):
    """Blocks the engine already holds are located in runs: over a socket each call costs."""
    engine = engines()
    entry = readers(engine).stat("data/a.bin")  # 6 blocks
    want = source.data("data/a.bin")
    # One loader thread per reader: the calls come in order.
    assert read_like_a_mount(readers(engine, ahead_threads=1), entry.path, entry.version, 0,
                             entry.size) == want

    counting = CountingLocates(engine)
    reader = readers(counting, ahead_threads=1)
    got = b"".join(read_like_a_mount(reader, entry.path, entry.version, off, BS // 2)
                   for off in range(0, entry.size, BS // 2))
    assert got == want
    assert 1 <= len(counting.calls) <= 3, counting.calls  # block 0 on demand, then runs


def test_the_sizes_kept_for_reads_stay_within_their_bound(engines, readers):
    """A listing of more files than the reader keeps sizes for: the kept sizes stay at the
    bound, the most recent ones answer reads without a stat, an older one costs one stat."""
    src = FakeUfs({f"many/{i:03d}": blob(10 + i, seed=i) for i in range(40)})
    counting = CountingStats(engines(ufs=src))
    reader = readers(counting, known_sizes=16)
    entries = reader.list("many")
    assert len(reader._sizes) == 16
    for entry in (entries[-1], entries[0]):
        stats = counting.stats
        assert read_like_a_mount(reader, entry.path, entry.version, 0, 100) == \
            src.data(entry.path)
        assert counting.stats == stats + (entry is entries[0])  # the first was let go
    assert len(reader._sizes) == 16
