"""The one tracker that tells a sequential reader from a random one."""

from __future__ import annotations

from cache_engine.sequential import SequentialTracker


def test_the_same_or_the_next_block_continues_a_run():
    t = SequentialTracker()
    assert not t.note("a", 3)  # nothing known yet
    assert t.note("a", 4) and t.note("a", 4) and t.note("a", 5)
    assert not t.note("a", 9) and not t.note("a", 2)


def test_a_first_read_of_block_zero_counts_only_when_asked():
    t = SequentialTracker()
    assert not t.note("a", 0)
    assert t.note("b", 0, from_start=True)
    assert not t.note("c", 1, from_start=True)


def test_the_least_recently_read_file_is_forgotten_past_the_bound():
    t = SequentialTracker(max_files=2)
    t.note("a", 0)
    t.note("b", 0)
    t.note("a", 1)  # a is now the most recent
    t.note("c", 0)  # b goes
    assert t.note("a", 2)
    assert not t.note("b", 1)
