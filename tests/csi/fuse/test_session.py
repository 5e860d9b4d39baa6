"""The session table and its journal: what a successor daemon knows of its predecessor's mount."""

from __future__ import annotations

import errno
import os

import pyfuse3
import pytest

from cache_engine.ufs.base import Entry, Kind
from csi.fuse.journal import Journal
from csi.fuse.session import SessionTable


def file(path: str, version: str = "v1", size: int = 10) -> Entry:
    return Entry(path, Kind.FILE, size, 5, version)


def directory(path: str) -> Entry:
    return Entry(path, Kind.DIR, 0, 5, "")


def busy_table(journal: Journal) -> tuple[SessionTable, dict]:
    """A table that went through lookups, forgets, opens and closes, flushed as fs does."""
    table = SessionTable(journal)
    d = table.inode_of("models", directory("models"))
    table.looked_up(d)
    a = table.inode_of("models/a.bin", file("models/a.bin"))
    table.looked_up(a)
    table.looked_up(a)
    b = table.inode_of("models/b.bin", file("models/b.bin", size=99))
    table.looked_up(b)
    gone = table.inode_of("models/gone.bin", file("models/gone.bin"))
    table.looked_up(gone)
    table.flush()
    table.forget(gone, 1)
    table.forget(a, 1)
    fh_a = table.open_file(a, "models/a.bin", "v1", True, 7)
    fh_b = table.open_file(b, "models/b.bin", "v1", False, 0)
    closed = table.open_file(b, "models/b.bin", "v1", False, 0)
    table.close_file(closed)
    dir_fh = table.open_dir(d, "models", [], 0.0)
    table.flush()
    return table, {"dir": d, "a": a, "b": b, "gone": gone, "fh_a": fh_a, "fh_b": fh_b,
                   "dir_fh": dir_fh, "closed": closed}


def test_a_successor_knows_every_node_id_and_handle(tmp_path):
    table, ids = busy_table(Journal(str(tmp_path)))
    resumed = SessionTable.resume(Journal(str(tmp_path)))
    assert resumed.path_of(ids["a"]) == "models/a.bin"
    assert resumed.version_of(ids["b"]).size == 99
    assert resumed.lookups == table.lookups
    assert resumed.files == table.files and ids["closed"] not in resumed.files
    assert resumed.files[ids["fh_a"]].backing_id == 7 and resumed.files[ids["fh_a"]].passthrough
    assert resumed.dirs[ids["dir_fh"]].path == "models"
    assert resumed.dirs[ids["dir_fh"]].entries is None  # listed again at the next readdir
    with pytest.raises(pyfuse3.FUSEError):  # the kernel forgot it: stale, as before
        resumed.path_of(ids["gone"])
    # Numbers go on where the predecessor stopped: none is handed out twice.
    new = resumed.inode_of("models/c.bin", file("models/c.bin"))
    assert new > max(ids[k] for k in ("dir", "a", "b", "gone"))
    assert resumed.open_file(new, "models/c.bin", "v1", False, 0) > ids["closed"]
    # The same file version keeps its number; a new version gets a new one.
    assert resumed.inode_of("models/a.bin", file("models/a.bin")) == ids["a"]
    assert resumed.inode_of("models/a.bin", file("models/a.bin", "v2")) not in ids.values()


def test_a_resumed_table_can_be_resumed_again(tmp_path):
    _, ids = busy_table(Journal(str(tmp_path)))
    first = SessionTable.resume(Journal(str(tmp_path)))
    fh = first.open_file(ids["b"], "models/b.bin", "v1", False, 0)
    first.flush()
    second = SessionTable.resume(Journal(str(tmp_path)))
    assert fh in second.files and second.files.keys() == first.files.keys()
    assert second.lookups == first.lookups


def test_a_torn_last_line_is_ignored(tmp_path):
    table, ids = busy_table(Journal(str(tmp_path)))
    with open(tmp_path / "journal", "ab") as f:
        f.write(b'["open",99,3,"models/b.b')  # the writer died in mid-write
    resumed = SessionTable.resume(Journal(str(tmp_path)))
    assert resumed.files == table.files


def test_nothing_reaches_the_kernel_before_it_is_journaled(tmp_path):
    """Changes wait in memory until flush(), which fs calls before each answer."""
    table = SessionTable(Journal(str(tmp_path)))
    inode = table.inode_of("x", file("x"))
    table.looked_up(inode)
    assert os.path.getsize(tmp_path / "journal") == 0
    table.flush()
    assert SessionTable.resume(Journal(str(tmp_path))).lookups[inode] == 1


def test_the_journal_is_rewritten_whole_once_it_is_mostly_history(tmp_path):
    table = SessionTable(Journal(str(tmp_path)), compact_after=100)
    for _ in range(500):  # lookups and forgets that cancel out: history, nothing live
        inode = table.inode_of("x", file("x"))
        table.looked_up(inode)
        table.flush()
        table.forget(inode, 1)
        table.flush()
    inode = table.inode_of("x", file("x"))
    table.looked_up(inode)
    fh = table.open_file(inode, "x", "v1", False, 0)
    table.flush()
    lines = (tmp_path / "journal").read_bytes().count(b"\n")
    assert lines < 110, lines
    resumed = SessionTable.resume(Journal(str(tmp_path)))
    assert resumed.lookups[inode] == 1 and fh in resumed.files


def test_the_init_request_is_kept_whole(tmp_path):
    journal = Journal(str(tmp_path))
    assert journal.init_request() is None
    journal.save_init(b"\x68\x00\x00\x00\x1a\x00\x00\x00" + bytes(96))
    assert Journal(str(tmp_path)).init_request()[4] == 26  # FUSE_INIT
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_a_full_disk_costs_the_successor_never_a_request(tmp_path):
    os.symlink("/dev/full", tmp_path / "journal")
    table = SessionTable(Journal(str(tmp_path)))
    inode = table.inode_of("x", file("x"))
    table.looked_up(inode)
    table.flush()  # ENOSPC: logged once, not raised
    assert table.path_of(inode) == "x"


def test_without_a_session_nothing_is_written(tmp_path):
    table = SessionTable()
    table.looked_up(table.inode_of("x", file("x")))
    table.flush()
    assert Journal(None).replay() == [] and Journal(None).init_request() is None


def test_a_successor_shows_the_modes_and_owners_its_predecessor_showed(tmp_path):
    table = SessionTable(Journal(str(tmp_path)), compact_after=1)
    private = Entry("private", Kind.FILE, 3, 5, "v1", None, 0o600, 1000, 2000)
    public = Entry("public", Kind.FILE, 3, 5, "v1", None, 0o644, 0, 0)
    for entry in (private, public):
        table.looked_up(table.inode_of(entry.path, entry))
    table.flush()  # compact_after=1: rewritten as a snapshot, which must keep them too
    resumed = SessionTable.resume(Journal(str(tmp_path)))
    for entry in (private, public):
        inode = resumed.inode_of(entry.path, entry)
        assert resumed.version_of(inode) == entry
        assert inode == table.inode_of(entry.path, entry)


def test_a_journal_from_before_modes_resumes_with_none(tmp_path):
    """A daemon of the previous version wrote five fields per entry: its successor shows the
    volume's defaults for those inodes (as the predecessor did), never a crash or mode 0."""
    (tmp_path / "journal").write_text('["node",2,"old.bin",["file",3,5,"v1",null]]\n'
                                      '["look",2,1]\n["next",3,1]\n')
    resumed = SessionTable.resume(Journal(str(tmp_path)))
    old = resumed.version_of(2)
    assert (old.path, old.size, old.mode, old.uid, old.gid) == ("old.bin", 3, None, None, None)


def test_a_chmod_at_the_source_keeps_the_node_id_and_shows_the_new_mode(tmp_path):
    """chmod and chown change no bytes, so no version: the kernel's node id and pages stay,
    and the next lookup's attributes carry the new mode, for a successor too."""
    table = SessionTable(Journal(str(tmp_path)))
    before = Entry("f", Kind.FILE, 3, 5, "v1", None, 0o644, 0, 0)
    inode = table.inode_of("f", before)
    after = Entry("f", Kind.FILE, 3, 5, "v1", None, 0o600, 0, 0)
    assert table.inode_of("f", after) == inode
    assert table.version_of(inode).mode == 0o600
    table.flush()
    assert SessionTable.resume(Journal(str(tmp_path))).version_of(inode).mode == 0o600


def test_a_node_id_the_kernel_forgot_is_dropped_and_stale():
    table = SessionTable()
    d = table.inode_of("models", directory("models"))
    a = table.inode_of("models/a.bin", file("models/a.bin"))
    for inode in (d, a, a):
        table.looked_up(inode)
    assert table.known_paths == 3
    assert table.forget(a, 1) is None  # one lookup left
    assert table.forget(a, 1) == "models/a.bin"
    assert table.forget(d, 1) == "models"
    assert table.known_paths == 1  # the root only: it is never dropped
    table.forget(pyfuse3.ROOT_INODE, 1)
    assert table.path_of(pyfuse3.ROOT_INODE) == ""
    for inode in (d, a):
        with pytest.raises(pyfuse3.FUSEError) as info:
            table.path_of(inode)
        assert info.value.errno == errno.ESTALE
        assert table.version_of(inode) is None


@pytest.mark.parametrize("forget_first", [True, False], ids=["forget-then-release",
                                                             "release-then-forget"])
def test_an_open_file_or_directory_keeps_its_node_id(forget_first):
    """The kernel's RELEASE may come after its FORGET: the node id goes with the later one."""
    table = SessionTable()
    d = table.inode_of("models", directory("models"))
    a = table.inode_of("models/a.bin", file("models/a.bin"))
    table.looked_up(d)
    table.looked_up(a)
    fh = table.open_file(a, "models/a.bin", "v1", False, 0)
    dir_fh = table.open_dir(d, "models", [], 0.0)
    if forget_first:
        table.forget(a, 1)
        table.forget(d, 1)
        assert table.path_of(a) == "models/a.bin" and table.path_of(d) == "models"
        assert table.version_of(a).size == 10
        assert table.inode_of("models/a.bin", file("models/a.bin")) == a
        table.close_file(fh)
        table.close_dir(dir_fh)
    else:
        table.close_file(fh)
        table.close_dir(dir_fh)
        assert table.path_of(a) == "models/a.bin" and table.path_of(d) == "models"
        table.forget(a, 1)
        table.forget(d, 1)
    assert table.known_paths == 1
    with pytest.raises(pyfuse3.FUSEError):
        table.path_of(a)


def test_numbers_are_never_reused_after_a_node_id_is_dropped(tmp_path):
    table = SessionTable(Journal(str(tmp_path)))
    given = []
    for _ in range(3):  # the same path, looked up and forgotten again and again
        inode = table.inode_of("a.bin", file("a.bin"))
        table.looked_up(inode)
        table.forget(inode, 1)
        given.append(inode)
    table.flush()
    assert len(set(given)) == 3
    resumed = SessionTable.resume(Journal(str(tmp_path)))
    assert resumed.known_paths == 1
    assert resumed.inode_of("a.bin", file("a.bin")) > max(given)


def test_a_successor_replaying_lookups_and_forgets_ends_with_the_same_pruned_table(tmp_path):
    table, ids = busy_table(Journal(str(tmp_path)))
    for i in range(50):  # a walk the kernel forgot again: nothing of it is kept
        inode = table.inode_of(f"walk/{i}", file(f"walk/{i}"))
        table.looked_up(inode)
        table.flush()
        table.forget(inode, 1)
    last = inode
    table.forget(ids["a"], 1)  # its last lookup; its file is still open
    table.flush()
    assert table.known_paths == 4  # the root, models, a.bin (open) and b.bin
    first = SessionTable.resume(Journal(str(tmp_path)))  # replays every record
    second = SessionTable.resume(Journal(str(tmp_path)))  # replays first's snapshot
    for resumed in (first, second):
        assert resumed.known_paths == table.known_paths
        assert resumed.lookups == table.lookups and resumed.files == table.files
        for inode in range(1, last + 1):  # every number given so far
            try:
                want = table.path_of(inode)
            except pyfuse3.FUSEError:
                with pytest.raises(pyfuse3.FUSEError):
                    resumed.path_of(inode)
            else:
                assert resumed.path_of(inode) == want
    first.close_file(ids["fh_a"])  # the kernel let go of a.bin long ago: now it goes
    assert first.known_paths == 3


def test_a_snapshot_holds_only_live_node_ids(tmp_path):
    table = SessionTable(Journal(str(tmp_path)), compact_after=10)
    kept = table.inode_of("kept", file("kept"))
    table.looked_up(kept)
    opened = table.inode_of("opened", file("opened"))
    table.looked_up(opened)
    table.open_file(opened, "opened", "v1", False, 0)
    for i in range(100):
        inode = table.inode_of(f"walk/{i}", file(f"walk/{i}"))
        table.looked_up(inode)
        table.forget(inode, 1)
        table.flush()
    table.forget(opened, 1)  # forgotten, but its file is open
    table.flush()
    assert len(Journal(str(tmp_path)).replay()) < 30  # rewritten as it went: the walk is gone
    SessionTable.resume(Journal(str(tmp_path)))  # which leaves the journal a snapshot
    records = Journal(str(tmp_path)).replay()
    assert sorted(r[1] for r in records if r[0] == "node") == [kept, opened]
    assert [r[1:] for r in records if r[0] == "look"] == [[kept, 1]]
