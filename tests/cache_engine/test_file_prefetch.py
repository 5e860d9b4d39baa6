"""Whole-file prefetch (`prefetch` volume parameter): one read of a model file loads all of it.

An mmap loader touches a safetensors file out of order; the engine loads the whole file in
offset order from its first lookup, so the loader's faults find their blocks cached.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections import Counter

import pytest

from cache_engine import file_prefetch
from tests.support.engine import BS, FakeClock, blob, make_spec, make_tiers, read_location
from tests.support.fake_source import FakeUfs
from tests.support.model_files import safetensors_file, safetensors_header
from tests.support.wait import wait_for

MODEL = "models/model.safetensors"
TENSORS = {f"layers.{i}.weight": BS + 4096 * i for i in range(8)}  # some 9 blocks


@pytest.fixture
def ufs():
    return FakeUfs({MODEL: safetensors_file(TENSORS), "data/a.bin": blob(5 * BS + 123)})


@pytest.fixture
def engine(engines, ufs, tmp_path):
    return engines(tiers=make_tiers(str(tmp_path), 16, 32), ufs=ufs)


def _open(engine, path, **params):
    ds = engine.open_dataset(make_spec(**params), {}).dataset_id
    return ds, engine.stat(ds, path)


def _cached(engine, ds, path) -> set[int]:
    return {b.key.index for b in engine.blocks(ds) if b.key.path == path}


def _blocks(size: int) -> int:
    return -(-size // BS)


def _reads_per_block(ufs, path) -> Counter:
    return Counter(offset // BS for p, offset, _ in ufs.reads if p == path)


def test_one_lookup_of_block_0_loads_every_block_of_a_safetensors_file_once(engine, ufs):
    ds, entry = _open(engine, MODEL, prefetch="safetensors")
    n = _blocks(entry.size)
    assert read_location(engine, ds, MODEL, entry.version, 0, entry.size) == ufs.data(MODEL)[:BS]
    assert engine.drain(30)
    assert _cached(engine, ds, MODEL) == set(range(n))
    assert _reads_per_block(ufs, MODEL) == Counter(range(n))  # each block read once
    reads = len(ufs.reads)
    for i in reversed(range(n)):  # the loader's faults, out of order: all hits
        got = read_location(engine, ds, MODEL, entry.version, i, entry.size)
        assert got == ufs.data(MODEL)[i * BS:(i + 1) * BS]
    assert len(ufs.reads) == reads


def test_the_first_lookup_of_any_block_starts_it(engine, ufs):
    ds, entry = _open(engine, MODEL, prefetch="safetensors")
    n = _blocks(entry.size)
    read_location(engine, ds, MODEL, entry.version, n - 2, entry.size)
    assert engine.drain(30)
    assert _cached(engine, ds, MODEL) == set(range(n))
    assert _reads_per_block(ufs, MODEL) == Counter(range(n))


def test_an_open_starts_it_before_any_read(engine, ufs):
    ds, entry = _open(engine, MODEL, prefetch="safetensors")
    assert engine.extent(ds, MODEL, entry.version, entry.size) is None
    assert engine.drain(30)
    assert _cached(engine, ds, MODEL) == set(range(_blocks(entry.size)))


def test_off_loads_only_what_is_read(engine, ufs):
    ds, entry = _open(engine, MODEL)  # the default
    read_location(engine, ds, MODEL, entry.version, 0, entry.size)
    engine.extent(ds, MODEL, entry.version, entry.size)
    assert engine.drain(30)
    assert _cached(engine, ds, MODEL) == {0}
    assert len(ufs.reads) == 1


def test_safetensors_leaves_other_files_alone_and_whole_loads_any_file(engines, engine, ufs):
    ds, entry = _open(engine, "data/a.bin", prefetch="safetensors")
    read_location(engine, ds, "data/a.bin", entry.version, 0, entry.size)
    assert engine.drain(30)
    assert _cached(engine, ds, "data/a.bin") == {0}
    engine.open_dataset(make_spec(prefetch="whole"), {}, "vol-whole")  # shared: widest wins
    read_location(engine, ds, "data/a.bin", entry.version, 3, entry.size)
    assert engine.drain(30)
    assert _cached(engine, ds, "data/a.bin") == set(range(6))
    assert _reads_per_block(ufs, "data/a.bin") == Counter(range(6))


def test_whole_loads_a_file_named_safetensors_without_a_header(engine, ufs):
    ufs.set(MODEL, blob(4 * BS))
    ds, entry = _open(engine, MODEL, prefetch="whole")
    read_location(engine, ds, MODEL, entry.version, 0, entry.size)
    assert engine.drain(30)
    assert _cached(engine, ds, MODEL) == set(range(4))


GARBAGE = {
    "random-bytes": blob(6 * BS, seed=3),
    "zip": b"PK\x03\x04" + blob(6 * BS),
    "header-past-the-end": (7 * BS).to_bytes(8, "little") + b"{" + blob(6 * BS),
    "header-not-json": (100).to_bytes(8, "little") + b"{" + b"x" * 99 + blob(6 * BS),
    "tensor-past-the-end": safetensors_header({"w": 7 * BS}) + blob(6 * BS),
}


@pytest.mark.parametrize("data", GARBAGE.values(), ids=GARBAGE.keys())
def test_a_file_named_safetensors_that_is_not_one_is_not_prefetched(engine, ufs, data):
    ufs.set(MODEL, data)
    ds, entry = _open(engine, MODEL, prefetch="safetensors")
    read_location(engine, ds, MODEL, entry.version, 0, entry.size)
    assert engine.drain(30)
    assert _cached(engine, ds, MODEL) == {0}
    assert len(ufs.reads) == 1


def test_a_header_longer_than_a_block_is_read_through_the_cache_first(engine, ufs):
    data = safetensors_file(TENSORS, metadata={"notes": "x" * (2 * BS)})
    ufs.set(MODEL, data)
    ds, entry = _open(engine, MODEL, prefetch="safetensors")
    read_location(engine, ds, MODEL, entry.version, 0, entry.size)
    assert engine.drain(30)
    assert _cached(engine, ds, MODEL) == set(range(_blocks(len(data))))
    assert _reads_per_block(ufs, MODEL) == Counter(range(_blocks(len(data))))


def test_a_file_version_is_prefetched_once_and_a_new_version_again(engine, ufs):
    ds, entry = _open(engine, MODEL, prefetch="safetensors", metadataTTL="0")
    n = _blocks(entry.size)
    read_location(engine, ds, MODEL, entry.version, 0, entry.size)
    assert engine.drain(30)
    for i in range(n):  # dropped (as a corrupt tier file would be): no second prefetch
        engine.report_corrupt(ds, MODEL, entry.version, i)
    read_location(engine, ds, MODEL, entry.version, 1, entry.size)
    assert engine.drain(30)
    assert _cached(engine, ds, MODEL) == {1}
    assert len(ufs.reads) == n + 1

    ufs.set(MODEL, safetensors_file(TENSORS, seed=9))  # a new version: prefetched again
    new = engine.stat(ds, MODEL)
    read_location(engine, ds, MODEL, new.version, 0, new.size)
    assert engine.drain(30)
    assert {b.key.index for b in engine.blocks(ds) if b.key.version == new.version} == \
        set(range(n))


def test_no_more_of_a_file_is_loaded_than_the_dataset_holds(engine, ufs):
    ds, entry = _open(engine, MODEL, prefetch="safetensors", capacity=4 * BS)
    read_location(engine, ds, MODEL, entry.version, 0, entry.size)
    assert engine.drain(30)
    assert _cached(engine, ds, MODEL) == {0, 1, 2, 3}  # the first blocks, in offset order
    assert len(ufs.reads) == 4


def test_a_file_prefetched_into_ram_is_in_its_extent_with_no_copy_under_the_loader(
        engines, ufs, tmp_path):
    """Blocks stored in a tier held in RAM land in their file's extent (growing.py): the
    prefetched file is passthrough-ready when its last block lands, and nothing is copied
    while the loader is still going through it (a compaction would be deferred until the
    reader paused: `FilePrefetches.quiet_in`)."""
    clock = FakeClock()
    engine = engines(tiers=make_tiers(str(tmp_path), 16, 32), ufs=ufs, clock=clock,
                     held_in_ram=lambda path: True)  # a tier held in RAM gets extents
    ds, entry = _open(engine, MODEL, prefetch="safetensors")
    n = _blocks(entry.size)
    read_location(engine, ds, MODEL, entry.version, 0, entry.size)
    wait_for(lambda: _cached(engine, ds, MODEL) == set(range(n)), what="the prefetch")
    assert engine.drain(5)  # no compaction waits for the reader: none is needed
    path = engine.extent(ds, MODEL, entry.version, entry.size)
    with open(path, "rb") as f:
        assert f.read() == ufs.data(MODEL)
    assert engine.statistics().extents_built == 0


def test_the_reader_that_started_it_never_waits_for_it_and_keeps_its_slots(engines, tmp_path):
    ufs = FakeUfs({MODEL: safetensors_file(TENSORS), "other.bin": blob(BS)})
    engine = engines(tiers=make_tiers(str(tmp_path), 16, 32), ufs=ufs)
    ds, entry = _open(engine, MODEL, prefetch="whole", sourceConcurrency="4",
                      sourceTimeout="5")
    n = _blocks(entry.size)
    ufs.hold(MODEL)
    try:
        reader = threading.Thread(target=read_location,
                                  args=(engine, ds, MODEL, entry.version, 2, entry.size))
        reader.start()  # its own block hangs, and so do the two loads the prefetch may start
        wait_for(lambda: ufs.count("read") == 3, what="the reader's and two loads' reads")
        other = engine.stat(ds, "other.bin")  # a quarter of the slots stays free for readers
        assert read_location(engine, ds, "other.bin", other.version, 0, other.size) == blob(BS)
        assert ufs.count("read") == 4
    finally:
        ufs.release()
    reader.join(10)
    assert engine.drain(30)
    assert _cached(engine, ds, MODEL) == set(range(n))
    assert _reads_per_block(ufs, MODEL) == Counter(range(n))
    assert engine.statistics().prefetches_skipped == 0  # it waited for slots, skipped none


def test_close_does_not_wait_for_a_source_that_hangs(engines, tmp_path):
    ufs = FakeUfs({MODEL: safetensors_file(TENSORS)})
    engine = engines(tiers=make_tiers(str(tmp_path), 16, 32), ufs=ufs)
    ds, entry = _open(engine, MODEL, prefetch="whole", sourceTimeout="0.5")
    ufs.hold(MODEL)
    try:
        engine.extent(ds, MODEL, entry.version, entry.size)  # an open: nothing read yet
        wait_for(lambda: ufs.count("read") >= 1, what="the prefetch to reach the source")
        closer = threading.Thread(target=engine.close)
        closer.start()
        closer.join(10)
        assert not closer.is_alive()
    finally:
        ufs.release()


# -- An open that waits for the prefetch (`prefetchWait`) ------------------------------------


def _extent_in_thread(engine, ds, entry, wait: float) -> tuple[threading.Thread, list]:
    """`engine.extent` with `wait`, as a mount's open calls it, on a thread of its own."""
    got: list = []
    opener = threading.Thread(target=lambda: got.append(
        engine.extent(ds, MODEL, entry.version, entry.size, wait)))
    opener.start()
    return opener, got


@contextlib.contextmanager
def _open_waiting(engine, ufs, wait: float = 300):
    """An open of MODEL waiting for its prefetch, whose source holds the header's block
    until the block ends: (the opener's thread, the list it appends its answer to)."""
    ds, entry = _open(engine, MODEL, prefetch="safetensors")
    ufs.hold(MODEL)
    try:
        opener, got = _extent_in_thread(engine, ds, entry, wait)
        wait_for(lambda: ufs.count("read") >= 1, what="the prefetch to read the header")
        yield opener, got
    finally:
        ufs.release()


@pytest.fixture
def ram_engine(engines, ufs, tmp_path):
    """An engine whose tiers count as held in RAM: a file loaded whole is in its extent."""
    return engines(tiers=make_tiers(str(tmp_path), 16, 32), ufs=ufs,
                   held_in_ram=lambda path: True)


def test_an_open_that_waits_gets_the_extent_once_the_prefetch_loaded_the_file(ram_engine, ufs):
    with _open_waiting(ram_engine, ufs, 60) as (opener, got):
        opener.join(0.5)
        assert opener.is_alive()  # the source holds the header's block: the open waits
    opener.join(30)
    assert got[0] is not None
    with open(got[0], "rb") as f:
        assert f.read() == ufs.data(MODEL)
    assert _reads_per_block(ufs, MODEL) == Counter(range(_blocks(len(ufs.data(MODEL)))))
    stats = ram_engine.statistics()
    assert (stats.prefetch_open_waits, stats.prefetch_open_waits_loaded) == (1, 1)


def test_an_open_waits_no_longer_than_asked(ram_engine, ufs):
    ds, entry = _open(ram_engine, MODEL, prefetch="safetensors")
    ufs.hold(MODEL)
    try:
        assert ram_engine.extent(ds, MODEL, entry.version, entry.size, 0.3) is None
    finally:
        ufs.release()
    assert ram_engine.drain(30)  # the prefetch went on: the next open passes through
    assert ram_engine.extent(ds, MODEL, entry.version, entry.size) is not None
    stats = ram_engine.statistics()
    assert (stats.prefetch_open_waits, stats.prefetch_open_waits_loaded) == (1, 0)


NOT_WHOLE = {  # (parameters, the file's bytes): its prefetch will not load every block
    "prefetch-off": ({}, None),
    "not-a-safetensors-file": ({"prefetch": "safetensors"}, blob(6 * BS)),
    "blocks-the-header-does-not-name": ({"prefetch": "safetensors"},
                                        safetensors_file(TENSORS) + blob(2 * BS)),
    "bigger-than-the-dataset-holds": ({"prefetch": "whole", "capacity": 4 * BS}, None),
}


@pytest.mark.parametrize("params,data", NOT_WHOLE.values(), ids=NOT_WHOLE.keys())
def test_an_open_does_not_wait_for_a_prefetch_that_will_not_load_the_file_whole(
        ram_engine, ufs, params, data):
    if data is not None:
        ufs.set(MODEL, data)
    ds, entry = _open(ram_engine, MODEL, **params)
    opener, got = _extent_in_thread(ram_engine, ds, entry, 300)
    opener.join(60)  # far less than it may wait: a wait would outlast it
    assert not opener.is_alive()
    assert got == [None]
    assert ram_engine.statistics().prefetch_open_waits_loaded == 0


def test_an_open_stops_waiting_when_the_prefetch_fails(ram_engine, ufs):
    with _open_waiting(ram_engine, ufs) as (opener, got):
        ufs.fail = OSError(errno.EIO, "the source broke")
    opener.join(60)
    assert got == [None]


def test_an_open_stops_waiting_when_the_engine_closes(ram_engine, ufs):
    with _open_waiting(ram_engine, ufs) as (opener, got):
        closer = threading.Thread(target=ram_engine.close)
        closer.start()
        opener.join(60)
        assert got == [None]
    closer.join(60)


def test_at_most_max_waiters_opens_wait_at_once(ram_engine, ufs):
    """A waiting open holds an engine thread, which every volume of the node shares."""
    ds, entry = _open(ram_engine, MODEL, prefetch="safetensors")
    ufs.hold(MODEL)
    try:
        openers = [_extent_in_thread(ram_engine, ds, entry, 300)
                   for _ in range(file_prefetch.MAX_WAITERS)]
        wait_for(lambda: ram_engine.statistics().prefetch_open_waits == len(openers),
                 what="every open to wait")
        assert ram_engine.extent(ds, MODEL, entry.version, entry.size, 300) is None  # at once
    finally:
        ufs.release()
    for opener, got in openers:
        opener.join(60)
        assert got[0] is not None
    assert ram_engine.statistics().prefetch_open_waits == file_prefetch.MAX_WAITERS


def test_an_open_waits_for_a_block_the_prefetch_left_to_another_reader(engines, tmp_path):
    """A reader's own miss of the last block is on its way when the prefetch comes to that
    block: the prefetch skips it (single-flight), and the open waits for it too."""
    last = _blocks(len(safetensors_file(TENSORS))) - 1
    ufs = _HeldBlock({MODEL: safetensors_file(TENSORS)}, offset=last * BS)
    engine = engines(tiers=make_tiers(str(tmp_path), 16, 32), ufs=ufs,
                     held_in_ram=lambda path: True)
    ds = engine.open_dataset(make_spec(), {}, "vol-reader").dataset_id
    entry = engine.stat(ds, MODEL)
    try:
        reader = threading.Thread(target=read_location,
                                  args=(engine, ds, MODEL, entry.version, last, entry.size))
        reader.start()  # prefetch off for it: only its own block, held at the source
        assert ufs.asked.wait(30)  # the reader's read reached the source
        engine.open_dataset(make_spec(prefetch="safetensors"), {}, "vol-loader")
        opener, got = _extent_in_thread(engine, ds, entry, 300)
        wait_for(lambda: _cached(engine, ds, MODEL) == set(range(last)),
                 what="the prefetch to load every other block")
        opener.join(0.5)
        assert opener.is_alive()  # it waits for the reader's block
    finally:
        ufs.held.set()
    opener.join(60)
    reader.join(60)
    assert got[0] is not None
    with open(got[0], "rb") as f:
        assert f.read() == ufs.data(MODEL)
    assert _reads_per_block(ufs, MODEL) == Counter(range(last + 1))  # each block read once


class _HeldBlock(FakeUfs):
    """A source whose reads at one offset wait until `held` is set (`asked`: one came)."""

    def __init__(self, tree: dict, offset: int):
        super().__init__(tree)
        self.offset = offset
        self.asked = threading.Event()
        self.held = threading.Event()

    def read(self, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        if offset == self.offset:
            self.asked.set()
            self.held.wait(60)
        return super().read(path, offset, length, version)
