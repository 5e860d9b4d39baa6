"""A source that hangs costs its own dataset a few slots for a while, and nothing else."""

from __future__ import annotations

import errno
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cache_engine.budget import SourceBudget, SourceTimeout
from tests.support.engine import BS, blob, make_spec, read_location
from tests.support.fake_source import FakeUfs
from tests.support.wait import wait_for

TIMEOUT = 0.5  # sourceTimeout of the sick datasets here
MARGIN = 3.0  # times the deadline a failed request may take on a loaded 2-core machine


@pytest.fixture
def sources():
    return {"local:///sick": FakeUfs({f"f{i}": blob(4 * BS, seed=i) for i in range(8)}),
            "local:///well": FakeUfs({f"f{i}": blob(4 * BS, seed=i) for i in range(8)})}


@pytest.fixture
def two(engines, sources):
    """An engine with a sick and a healthy dataset: (engine, sick id, well id)."""
    engine = engines(open_ufs=lambda spec, secrets: sources[spec.source.uri])
    sick = engine.open_dataset(make_spec("local:///sick", sourceTimeout=str(TIMEOUT),
                                         sourceConcurrency="2"), {}).dataset_id
    well = engine.open_dataset(make_spec("local:///well"), {}).dataset_id
    yield engine, sick, well
    for ufs in sources.values():
        ufs.release()  # let stuck workers end


def _timed(fn, *args):
    start = time.monotonic()
    try:
        return fn(*args), time.monotonic() - start
    except Exception as e:  # noqa: BLE001 - returned for the test to check
        return e, time.monotonic() - start


def test_a_hung_source_fails_its_own_reads_in_time_and_no_other_dataset_waits(two, sources):
    engine, sick, well = two
    sick_ufs = sources["local:///sick"]
    entries = [engine.stat(sick, f"f{i}") for i in range(8)]
    sick_ufs.hold()
    with ThreadPoolExecutor(8) as pool:  # more readers than the sick dataset has slots
        results = list(pool.map(lambda e: _timed(engine.locate, sick, e.path, e.version, 0,
                                                 e.size), entries))
        for e in range(8):  # meanwhile the healthy dataset reads as ever
            entry = engine.stat(well, f"f{e}")
            data = b"".join(read_location(engine, well, entry.path, entry.version, i, entry.size)
                            for i in range(4))
            assert data == sources["local:///well"].data(f"f{e}")
    for error, seconds in results:
        assert isinstance(error, SourceTimeout) and error.errno == errno.ETIMEDOUT
        assert seconds < TIMEOUT * MARGIN
    assert sick_ufs.count("read") == 2  # the two slots; the others waited, then gave up
    # Both slots are held by reads that outlived their deadline: the next fails at once.
    error, seconds = _timed(engine.locate, sick, entries[0].path, entries[0].version, 1,
                            entries[0].size)
    assert isinstance(error, SourceTimeout) and seconds < TIMEOUT
    assert "stuck" in str(error)
    sick_ufs.release()  # the source recovers: the stuck reads return, the slots come back
    wait_for(lambda: engine._datasets[sick].budget.statistics()["in_flight"] == 0,
             what="the stuck reads to return")
    entry = entries[3]
    assert read_location(engine, sick, entry.path, entry.version, 2, entry.size) == \
        sick_ufs.data("f3")[2 * BS:3 * BS]


def test_a_hung_stat_fails_within_the_deadline(two, sources):
    engine, sick, well = two
    sources["local:///sick"].hold("f1")
    error, seconds = _timed(engine.stat, sick, "f1")
    assert isinstance(error, SourceTimeout) and seconds < TIMEOUT * MARGIN
    assert "stat of 'f1'" in str(error) and "sourceTimeout" in str(error)
    assert engine.stat(sick, "f2").size == 4 * BS  # the same dataset, another path: answered


def test_a_stat_that_timed_out_fails_again_at_once_for_one_timeout(two, sources):
    """The kernel looks a name up again after a failed lookup, and queues every other reader
    of that name behind it: a stat that waited its deadline must not be waited for again."""
    engine, sick, _ = two
    sick_ufs = sources["local:///sick"]
    sick_ufs.hold("f1")
    error, _ = _timed(engine.stat, sick, "f1")
    assert isinstance(error, SourceTimeout)
    sick_ufs.release()  # too late for the stats of the next deadline: they fail at once
    for _ in range(3):
        error, seconds = _timed(engine.stat, sick, "f1")
        assert isinstance(error, SourceTimeout) and seconds < TIMEOUT / 2
        assert "timed out" in str(error) and error.errno == errno.ETIMEDOUT
    assert sick_ufs.count("stat") == 1
    assert engine.stat(sick, "f2").size == 4 * BS  # another path asks the source
    # One deadline on, the source is asked again, and answers.
    assert wait_for(lambda: engine.stat(sick, "f1").size == 4 * BS, TIMEOUT * MARGIN,
                    "the stat of f1 to ask the source again")
    assert sick_ufs.count("stat") == 3


def test_a_reader_waiting_for_another_readers_fetch_gets_a_timeout_not_a_hang(two, sources):
    engine, sick, _ = two
    sick_ufs = sources["local:///sick"]
    entry = engine.stat(sick, "f0")
    sick_ufs.hold("f0")
    leader = threading.Thread(target=_timed, args=(engine.locate, sick, entry.path,
                                                   entry.version, 0, entry.size))
    leader.start()
    wait_for(lambda: sick_ufs.count("read") == 1, what="the first read to start")
    follower: list = []
    thread = threading.Thread(target=lambda: follower.append(
        _timed(engine.locate, sick, entry.path, entry.version, 0, entry.size)), daemon=True)
    thread.start()
    thread.join(TIMEOUT * MARGIN * 2)
    assert follower, "the second reader of the block still waits"
    error, seconds = follower[0]
    assert isinstance(error, SourceTimeout) and seconds < TIMEOUT * MARGIN
    assert sick_ufs.count("read") == 1  # it waited on the first read, never read itself
    leader.join()


def test_read_ahead_never_takes_the_slots_foreground_reads_need(engines, sources):
    ufs = sources["local:///sick"]
    engine = engines(ufs=ufs)
    ds = engine.open_dataset(make_spec("local:///sick", sourceConcurrency="4"), {}).dataset_id
    entries = [engine.stat(ds, f"f{i}") for i in range(8)]
    ufs.hold("f0")
    try:
        assert engine.prefetch(ds, "f0", entries[0].version, entries[0].size, 0, 4) == 4
        wait_for(lambda: engine.statistics().prefetches_skipped == 1 and
                 ufs.count("read") == 3, what="three read-aheads to hang, the fourth skipped")
        for entry in entries[1:]:  # a quarter of the slots stays free for a reader's requests
            assert read_location(engine, ds, entry.path, entry.version, 0, entry.size) == \
                ufs.data(entry.path)[:BS]
        assert ufs.count("read") == 3 + 7
    finally:
        ufs.release()
    assert engine.drain(10)


def test_a_slot_held_by_a_late_operation_is_given_back_when_it_returns():
    budget = SourceBudget("ds", slots=1, idle_seconds=0.2)
    gate = threading.Event()
    with pytest.raises(SourceTimeout):
        budget.run(gate.wait, time.monotonic() + 0.1, "a stuck call")
    assert budget.statistics() | {"timeouts": 0} == {
        "slots": 1, "in_flight": 1, "overdue": 1, "waiting": 0, "timeouts": 0}
    assert not budget.try_take()
    gate.set()
    wait_for(lambda: budget.statistics()["in_flight"] == 0, what="the slot to come back")
    assert budget.run(lambda: 42, time.monotonic() + 5, "a quick call") == 42
    with pytest.raises(ValueError):  # an operation's own error reaches its caller
        budget.run(lambda: int("x"), time.monotonic() + 5, "a failing call")


def test_opening_a_source_that_hangs_fails_in_time(engines):
    gate = threading.Event()
    opened: list = []

    def open_ufs(spec, secrets):
        gate.wait()
        ufs = FakeUfs({"a": b"x"})
        opened.append(ufs)
        return ufs

    engine = engines(open_ufs=open_ufs)
    spec = make_spec("local:///hangs", sourceTimeout=str(TIMEOUT))
    error, seconds = _timed(engine.open_dataset, spec, {})
    assert isinstance(error, SourceTimeout) and seconds < TIMEOUT * MARGIN
    gate.set()
    wait_for(lambda: opened and opened[0].closed, what="the late backend to be closed")
    assert engine.open_dataset(spec, {}).dataset_id
