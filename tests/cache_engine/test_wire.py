"""Engine values on the wire: what a mount daemon gets from an engine of any version."""

from __future__ import annotations

from cache_engine.ufs.base import Entry, Kind
from cache_engine.wire import entry_from_pb, entry_to_pb
from eddy.base.pb import cache_pb2


def _through_the_wire(entry: Entry) -> Entry:
    return entry_from_pb(cache_pb2.Entry.FromString(entry_to_pb(entry).SerializeToString()))


def test_entries_keep_mode_and_owner_across_the_wire():
    for entry in (Entry("a/b.bin", Kind.FILE, 10, 7, "v1", None, 0o640, 1000, 100),
                  Entry("a", Kind.DIR, mode=0o2750, uid=0, gid=0),
                  Entry("l", Kind.SYMLINK, 5, 1, "", "a/b", 0o777, 1, 2)):
        assert _through_the_wire(entry) == entry


def test_a_zero_mode_or_owner_is_kept_as_zero_not_taken_for_absent():
    entry = Entry("locked", Kind.FILE, 1, 1, "v1", None, 0, 0, 0)
    assert (_through_the_wire(entry).mode, _through_the_wire(entry).uid) == (0, 0)


def test_entries_of_a_source_without_owners_stay_without():
    entry = Entry("s3/object", Kind.FILE, 10, 7, "etag")
    assert _through_the_wire(entry) == entry
    assert _through_the_wire(entry).mode is None


def test_an_engine_that_predates_modes_gives_none_not_mode_zero():
    # What an older engine sends: an Entry without fields 7, 8, 9 on the wire.
    old = cache_pb2.Entry(path="f", kind=cache_pb2.Entry.FILE, size=3, mtime_ns=1, version="v")
    entry = entry_from_pb(cache_pb2.Entry.FromString(old.SerializeToString()))
    assert (entry.mode, entry.uid, entry.gid) == (None, None, None)
