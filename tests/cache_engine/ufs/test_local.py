"""The local-directory source: what a pod would see through a `local:///dir` volume."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_engine.spec import parse_parameters
from cache_engine.ufs import Kind, UfsUnavailable, VersionChanged, open_ufs
from cache_engine.ufs.local import LocalUfs

PAYLOAD = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, every offset distinguishable


@pytest.fixture
def tree(tmp_path):
    """root/ with files, a nested dir, links inside and outside, a fifo; and a secret outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"do not serve")
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "data.bin").write_bytes(PAYLOAD)
    (root / "empty").write_bytes(b"")
    (root / "sub" / "inner.txt").write_bytes(b"inner")
    (root / "sub" / "deeper" / "leaf.txt").write_bytes(b"leaf")
    os.symlink("data.bin", root / "link_in")
    os.symlink("../data.bin", root / "sub" / "up_link")  # still inside the root
    os.symlink(str(outside / "secret.txt"), root / "abs_out")
    os.symlink("../outside/secret.txt", root / "rel_out")
    os.symlink("../outside", root / "dir_out")
    os.mkfifo(root / "fifo")
    ufs = LocalUfs(str(root))
    yield ufs, root
    ufs.close()


def test_stat_root_file_and_dir(tree):
    ufs, root = tree
    assert ufs.stat("").kind is Kind.DIR
    assert ufs.stat("/").kind is Kind.DIR
    e = ufs.stat("data.bin")
    assert (e.kind, e.size, e.name) == (Kind.FILE, len(PAYLOAD), "data.bin")
    assert e.mtime_ns == os.stat(root / "data.bin").st_mtime_ns
    assert e.version
    assert ufs.stat("sub/deeper").kind is Kind.DIR
    assert ufs.stat("/sub/./deeper/leaf.txt").path == "sub/deeper/leaf.txt"
    assert ufs.stat("empty").size == 0


def test_entries_carry_the_source_modes_and_owners(tree):
    ufs, root = tree
    before = ufs.stat("data.bin").version
    os.chown(root / "data.bin", 1234, 5678)  # first: a chown clears the setuid bit
    os.chown(root / "link_in", 4321, 8765, follow_symlinks=False)
    os.chmod(root / "data.bin", 0o4640)
    os.chmod(root / "sub", 0o2710)
    e = ufs.stat("data.bin")
    assert (e.mode, e.uid, e.gid) == (0o4640, 1234, 5678)  # bits as they are: the mount decides
    assert (ufs.stat("sub").mode, ufs.stat("sub").uid) == (0o2710, os.stat(root / "sub").st_uid)
    link = ufs.stat("link_in")  # the link's own owner, not its target's
    assert (link.uid, link.gid) == (4321, 8765)
    assert [(x.name, x.mode) for x in ufs.list("") if x.name == "data.bin"] == \
        [("data.bin", 0o4640)]
    assert ufs.stat("").mode == os.stat(root).st_mode & 0o7777
    assert e.version == before  # a chmod or chown changes no bytes: cached blocks stay valid


def test_missing_paths(tree):
    ufs, _ = tree
    with pytest.raises(FileNotFoundError):
        ufs.stat("nope")
    with pytest.raises(FileNotFoundError):
        ufs.read("sub/nope", 0, 10)
    with pytest.raises(FileNotFoundError):
        ufs.list("nope")
    with pytest.raises(NotADirectoryError):
        ufs.list("data.bin")
    with pytest.raises(NotADirectoryError):
        ufs.stat("data.bin/x")


def test_list_is_sorted_and_hides_what_leaves_the_root(tree):
    ufs, _ = tree
    entries = ufs.list("")
    names = [e.name for e in entries]
    assert names == ["data.bin", "empty", "link_in", "sub"]  # no links out, no fifo
    kinds = {e.name: e.kind for e in entries}
    assert kinds == {"data.bin": Kind.FILE, "empty": Kind.FILE, "link_in": Kind.SYMLINK,
                     "sub": Kind.DIR}
    assert [e.path for e in ufs.list("sub")] == ["sub/deeper", "sub/inner.txt", "sub/up_link"]


def test_symlinks_inside_are_shown_with_their_target(tree):
    ufs, _ = tree
    link = ufs.stat("link_in")
    assert (link.kind, link.target, link.size) == (Kind.SYMLINK, "data.bin", len("data.bin"))
    assert ufs.stat("sub/up_link").target == "../data.bin"


@pytest.mark.parametrize("path", ["abs_out", "rel_out", "dir_out", "fifo"])
def test_links_out_and_special_files_are_hidden(tree, path):
    ufs, _ = tree
    with pytest.raises(FileNotFoundError):
        ufs.stat(path)


@pytest.mark.parametrize("path", ["abs_out", "rel_out", "link_in", "dir_out/secret.txt"])
def test_reads_never_follow_symlinks(tree, path):
    ufs, _ = tree
    with pytest.raises(OSError) as info:
        ufs.read(path, 0, 100)
    assert not isinstance(info.value, VersionChanged)


@pytest.mark.parametrize("path", ["..", "../outside/secret.txt", "sub/../../outside",
                                  "/../x", "sub/../.."])
def test_dotdot_paths_are_refused(tree, path):
    ufs, _ = tree
    with pytest.raises(PermissionError):
        ufs.stat(path)
    with pytest.raises(PermissionError):
        ufs.read(path, 0, 10)
    with pytest.raises(PermissionError):
        ufs.list(path)


def test_dotdot_that_stays_inside_is_fine(tree):
    ufs, _ = tree
    assert ufs.read("sub/../data.bin", 0, 4) == PAYLOAD[:4]


def test_read_offsets_and_end_of_file(tree):
    ufs, _ = tree
    n = len(PAYLOAD)
    assert ufs.read("data.bin", 0, n) == PAYLOAD
    assert ufs.read("data.bin", 100, 50) == PAYLOAD[100:150]
    assert ufs.read("data.bin", n - 4, 100) == b"tail"  # short only at the end
    assert ufs.read("data.bin", n, 10) == b""
    assert ufs.read("data.bin", n + 1000, 10) == b""
    assert ufs.read("data.bin", 10, 0) == b""
    assert ufs.read("empty", 0, 10) == b""


@settings(max_examples=60, deadline=None)
@given(offset=st.integers(0, len(PAYLOAD) + 10), length=st.integers(0, len(PAYLOAD) + 10))
def test_any_range_equals_the_file_bytes(tmp_path_factory, offset, length):
    root = tmp_path_factory.getbasetemp() / "prop"
    root.mkdir(exist_ok=True)
    (root / "f").write_bytes(PAYLOAD)
    ufs = LocalUfs(str(root))
    try:
        assert ufs.read("f", offset, length) == PAYLOAD[offset:offset + length]
    finally:
        ufs.close()


def test_version_changes_with_the_content(tree):
    ufs, root = tree
    old = ufs.stat("data.bin").version
    assert ufs.read("data.bin", 0, 4, version=old) == PAYLOAD[:4]
    path = root / "data.bin"
    st = os.stat(path)
    path.write_bytes(b"new content")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    new = ufs.stat("data.bin").version
    assert new != old
    with pytest.raises(VersionChanged):
        ufs.read("data.bin", 0, 4, version=old)
    assert ufs.read("data.bin", 0, 3, version=new) == b"new"


def test_replaced_file_changes_version_even_with_same_size_and_mtime(tree):
    ufs, root = tree
    path = root / "data.bin"
    st = os.stat(path)
    old = ufs.stat("data.bin").version
    tmp = root / "data.tmp"
    tmp.write_bytes(bytes(reversed(PAYLOAD)))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)  # new inode, same size and mtime
    assert ufs.stat("data.bin").version != old
    with pytest.raises(VersionChanged):
        ufs.read("data.bin", 0, 4, version=old)


def test_missing_or_non_directory_root_is_unavailable(tmp_path):
    with pytest.raises(UfsUnavailable, match="does not exist"):
        LocalUfs(str(tmp_path / "nope"))
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UfsUnavailable, match="not a directory"):
        LocalUfs(str(tmp_path / "file"))


@pytest.mark.parametrize("via", ["middle", "last"])
def test_a_root_reached_through_a_symlink_is_refused_and_named(tmp_path, via):
    (tmp_path / "real" / "etc").mkdir(parents=True)
    (tmp_path / "real" / "etc" / "passwd").write_bytes(b"root:x:0:0")
    (tmp_path / "allowed").mkdir()
    if via == "middle":  # local:///allowed/up/etc with up -> the real tree
        os.symlink(tmp_path / "real", tmp_path / "allowed" / "up")
        root, link = tmp_path / "allowed" / "up" / "etc", tmp_path / "allowed" / "up"
    else:  # the root itself is a link
        os.symlink(tmp_path / "real" / "etc", tmp_path / "allowed" / "etc")
        root = link = tmp_path / "allowed" / "etc"
    with pytest.raises(UfsUnavailable, match=f"{link} is a symlink.*real path") as e:
        LocalUfs(str(root))
    assert str(tmp_path / "real" / "etc") in str(e.value)


def test_a_file_swapped_for_a_fifo_fails_at_once_instead_of_blocking(tree):
    ufs, root = tree
    version = ufs.stat("data.bin").version
    os.unlink(root / "data.bin")
    os.mkfifo(root / "data.bin")  # nobody will ever write to it
    with pytest.raises(FileNotFoundError, match="not a regular file"):
        ufs.read("data.bin", 0, 100, version)


def test_a_file_that_changes_during_the_read_is_not_served_as_its_old_version(tree):
    _, root = tree

    class ChangedMidRead(LocalUfs):
        """The file is appended to after it was opened and checked, while it is being read."""

        def _pread_all(self, fd, offset, length):
            data = super()._pread_all(fd, offset, length)
            with open(root / "data.bin", "ab") as f:
                f.write(b"more")
            return data

    ufs = ChangedMidRead(str(root))
    try:
        version = ufs.stat("data.bin").version
        with pytest.raises(VersionChanged):
            ufs.read("data.bin", 0, 100, version)
    finally:
        ufs.close()


def test_open_ufs_builds_a_local_backend(tree):
    _, root = tree
    ufs = open_ufs(parse_parameters({"source": f"local://{root}"}))
    try:
        assert ufs.description == f"local://{root}"
        assert ufs.read("sub/inner.txt", 0, 100) == b"inner"
    finally:
        ufs.close()
