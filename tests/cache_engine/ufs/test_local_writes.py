"""Writes into a directory source: straight through, never outside the root, owners kept."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from cache_engine.ufs.local import LocalUfs
from cache_engine.ufs.local_writes import RENAME_EXCHANGE, RENAME_NOREPLACE, LocalWriter


@pytest.fixture
def root(tmp_path):
    (tmp_path / "data" / "d").mkdir(parents=True)
    (tmp_path / "data" / "old.txt").write_bytes(b"old")
    (tmp_path / "outside").mkdir()
    os.symlink(str(tmp_path / "outside"), tmp_path / "data" / "escape")
    return tmp_path / "data"


@pytest.fixture
def writer(root):
    ufs = LocalUfs(str(root))
    yield LocalWriter(ufs)
    ufs.close()


def test_a_new_file_belongs_to_its_maker_and_an_existing_one_keeps_its_owner(writer, root):
    f = writer.open("d/new.bin", os.O_WRONLY | os.O_CREAT, 0o640, (1234, 5678))
    try:
        assert f.write(b"hello", 0) == 5
        assert (f.stat().size, f.stat().uid) == (5, 1234)
    finally:
        f.close()
    st = os.stat(root / "d" / "new.bin")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)
    assert (root / "d" / "new.bin").read_bytes() == b"hello"

    f = writer.open("old.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600, (1234, 5678))
    try:
        f.write(b"+more", 0)  # O_APPEND: at the end, whatever the offset
    finally:
        f.close()
    assert (root / "old.txt").read_bytes() == b"old+more"
    assert os.stat(root / "old.txt").st_uid == os.getuid()
    with pytest.raises(FileExistsError):
        writer.open("old.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def test_nothing_is_written_outside_the_root(writer, root, tmp_path):
    with pytest.raises(NotADirectoryError):  # a symlinked directory is not followed
        writer.open("escape/x", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError) as e:  # nor a symlink as the last component
        writer.open("escape", os.O_WRONLY)
    assert e.value.errno == errno.ELOOP
    with pytest.raises(PermissionError):
        writer.mkdir("../up", 0o755)
    with pytest.raises(PermissionError):
        writer.symlink("d/link", "../../outside")
    with pytest.raises(PermissionError):
        writer.rmdir("")
    writer.symlink("d/link", "../old.txt", (7, 8))
    assert os.readlink(root / "d" / "link") == "../old.txt"
    assert os.lstat(root / "d" / "link").st_uid == 7
    assert os.listdir(tmp_path / "outside") == []


def test_a_fifo_is_refused_at_once(writer, root):
    os.mkfifo(root / "pipe")
    with pytest.raises(OSError) as e:
        writer.open("pipe", os.O_RDWR)
    assert e.value.errno == errno.EINVAL


def test_rename_keeps_its_flags_meaning(writer, root):
    (root / "a").write_bytes(b"A")
    (root / "b").write_bytes(b"B")
    with pytest.raises(FileExistsError):
        writer.rename("a", "b", RENAME_NOREPLACE)
    writer.rename("a", "b", RENAME_EXCHANGE)
    assert ((root / "a").read_bytes(), (root / "b").read_bytes()) == (b"B", b"A")
    writer.rename("a", "d/c")
    assert not (root / "a").exists() and (root / "d" / "c").read_bytes() == b"B"


def test_modes_owners_times_and_removal(writer, root):
    writer.mkdir("d/sub", 0o750, (11, 12))
    assert (os.stat(root / "d" / "sub").st_uid, stat.S_IMODE(os.stat(root / "d/sub").st_mode)) \
        == (11, 0o750)
    writer.chmod("old.txt", 0o600)
    writer.chown("old.txt", 21, -1)
    writer.utime("old.txt", 1_000_000_000, 2_000_000_000)
    st = os.stat(root / "old.txt")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns) == (0o600, 21, 2_000_000_000)
    writer.symlink("lnk", "old.txt")
    with pytest.raises(OSError) as e:
        writer.chmod("lnk", 0o777)
    assert e.value.errno == errno.EOPNOTSUPP
    writer.truncate("old.txt", 1)
    assert (root / "old.txt").read_bytes() == b"o"
    (root / "d" / "sub" / "f").write_bytes(b"")
    with pytest.raises(OSError) as e:
        writer.rmdir("d/sub")
    assert e.value.errno == errno.ENOTEMPTY
    writer.unlink("d/sub/f")
    writer.rmdir("d/sub")
    assert not (root / "d" / "sub").exists()
