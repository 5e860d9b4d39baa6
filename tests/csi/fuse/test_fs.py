"""DatasetFs without a kernel: its request handlers called directly over a fake source.

The fake counts stat/list calls, so the metadata TTL is checked against a fake clock rather than
by sleeping; everything that needs the kernel (readdir, page cache) is in test_daemon.py.
"""

from __future__ import annotations

import errno
import os

import pyfuse3
import pytest
import trio

from cache_engine.engine import CacheEngine
from cache_engine.reader import DatasetReader
from cache_engine.ufs.base import UfsUnavailable, VersionChanged
from cache_engine.ufs.local import LocalUfs
from csi.fuse.attributes import Permissions
from csi.fuse.fs import DatasetFs, errno_of
from csi.fuse.session import Journal, SessionTable
from tests.support.engine import FakeClock, make_spec, make_tiers
from tests.support.fake_source import FakeUfs

TREE = {"": None, "dir": None, "dir/a.bin": b"abcdef", "link": ("->", "dir/a.bin"),
        "empty": b""}


def make(ttl: float | None = 60.0, tree=TREE):
    clock = FakeClock()
    ufs = FakeUfs(tree)
    return DatasetFs(ufs, ttl, clock=clock), ufs, clock


def run(fn):
    return trio.run(fn)


def test_attributes_follow_the_entry_kind():
    fs, _, _ = make()

    async def go():
        d = await fs.lookup(pyfuse3.ROOT_INODE, b"dir")
        f = await fs.lookup(d.st_ino, b"a.bin")
        link = await fs.lookup(pyfuse3.ROOT_INODE, b"link")
        return d, f, link, await fs.readlink(link.st_ino)

    d, f, link, target = run(go)
    assert (d.st_mode, f.st_mode, link.st_mode) == (0o40555, 0o100444, 0o120777)
    assert f.st_size == 6 and f.st_blksize == 1 << 20 and f.st_mtime_ns == 7
    assert f.st_uid == f.st_gid == 0
    assert target == b"dir/a.bin"


def test_a_volume_s_owner_and_modes_show_on_lookups_and_listings():
    """An object store has no owners: the volume's uid, gid, fileMode and dirMode are shown
    (listings through the kernel: test_daemon.py)."""
    permissions = Permissions(uid=1000, gid=2000, file_mode=0o640, dir_mode=0o750)
    fs = DatasetFs(FakeUfs(TREE), 60.0, clock=FakeClock(), permissions=permissions)

    async def go():
        d = await fs.lookup(pyfuse3.ROOT_INODE, b"dir")
        f = await fs.lookup(d.st_ino, b"a.bin")
        root = await fs.getattr(pyfuse3.ROOT_INODE)
        return d, f, root

    d, f, root = run(go)
    assert (d.st_mode, d.st_uid, d.st_gid) == (0o40750, 1000, 2000)
    assert (root.st_mode, root.st_uid) == (0o40750, 1000)
    assert (f.st_mode, f.st_uid, f.st_gid) == (0o100640, 1000, 2000)


def test_a_chmod_at_the_source_shows_after_the_ttl_on_the_same_inode(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "f").chmod(0o644)
    clock = FakeClock()
    fs = DatasetFs(LocalUfs(str(tmp_path)), 10.0, clock=clock)

    async def go():
        before = await fs.lookup(pyfuse3.ROOT_INODE, b"f")
        (tmp_path / "f").chmod(0o600)
        os.chown(tmp_path / "f", 1000, 2000)
        clock.advance(11)
        after = await fs.lookup(pyfuse3.ROOT_INODE, b"f")
        return before, after, await fs.getattr(after.st_ino)

    before, after, attr = run(go)
    assert (before.st_mode, before.st_uid) == (0o100644, 0)
    assert after.st_ino == before.st_ino  # the same bytes: the kernel keeps its pages
    assert (after.st_mode, after.st_uid, after.st_gid) == (0o100600, 1000, 2000)
    assert (attr.st_mode, attr.st_uid) == (0o100600, 1000)


def test_inode_numbers_are_distinct_and_never_reused():
    """A number stays while the kernel holds it; once forgotten, the next lookup of the same
    path gets a new one, and the old one is stale."""
    fs, _, clock = make(ttl=1)

    async def go():
        first = (await fs.lookup(pyfuse3.ROOT_INODE, b"dir")).st_ino
        held = (await fs.lookup(pyfuse3.ROOT_INODE, b"dir")).st_ino
        await fs.forget([(first, 2)])
        clock.now += 10  # expired: the next lookup asks the source again
        again = (await fs.lookup(pyfuse3.ROOT_INODE, b"dir")).st_ino
        other = (await fs.lookup(pyfuse3.ROOT_INODE, b"empty")).st_ino
        dotdot = (await fs.lookup(again, b"..")).st_ino
        with pytest.raises(pyfuse3.FUSEError) as stale:
            await fs.getattr(first)
        return first, held, again, other, dotdot, stale.value.errno

    first, held, again, other, dotdot, stale = run(go)
    assert first == held
    assert len({pyfuse3.ROOT_INODE, first, again, other}) == 4
    assert dotdot == pyfuse3.ROOT_INODE
    assert stale == errno.ESTALE


def test_metadata_is_cached_for_the_ttl_only():
    fs, ufs, clock = make(ttl=5)

    async def go():
        ino = (await fs.lookup(pyfuse3.ROOT_INODE, b"empty")).st_ino
        await fs.getattr(ino)
        await fs.getattr(ino)
        assert ufs.count("stat") == 1
        clock.now += 4.9
        assert (await fs.getattr(ino)).attr_timeout == pytest.approx(0.1)
        assert ufs.count("stat") == 1
        clock.now += 0.2
        ufs.change("empty", b"now longer")
        old = await fs.getattr(ino)  # the inode of the version first seen: never changes
        assert old.st_size == 0 and old.attr_timeout == 0
        new = await fs.lookup(pyfuse3.ROOT_INODE, b"empty")  # after the TTL: the new version
        assert ufs.count("stat") == 2 and new.st_size == 10 and new.attr_timeout == 5
        assert new.st_ino != ino

    run(go)


def test_immutable_metadata_never_expires_and_kernel_timeout_is_capped():
    fs, ufs, clock = make(ttl=None)

    async def go():
        attr = await fs.lookup(pyfuse3.ROOT_INODE, b"empty")
        clock.now += 10 * 365 * 86400
        again = await fs.getattr(attr.st_ino)
        return attr, again

    attr, again = run(go)
    assert ufs.count("stat") == 1
    assert attr.entry_timeout == attr.attr_timeout == again.attr_timeout == 86400


def test_a_listing_answers_lookups_and_negative_lookups():
    fs, ufs, clock = make(ttl=30)

    async def go():
        d = await fs.lookup(pyfuse3.ROOT_INODE, b"dir")
        fh = await fs.opendir(d.st_ino)
        await fs.releasedir(fh)
        before = ufs.count("stat")
        a = await fs.lookup(d.st_ino, b"a.bin")
        missing = await fs.lookup(d.st_ino, b"nope.py")
        return before, a, missing

    before, a, missing = run(go)
    assert ufs.count("stat") == before  # both answered from the listing
    assert a.st_size == 6
    assert missing.st_ino == 0 and missing.entry_timeout == 30  # cached absence


def test_missing_names_without_ttl_are_enoent():
    fs, _, _ = make(ttl=0)
    with pytest.raises(pyfuse3.FUSEError) as info:
        run(lambda: fs.lookup(pyfuse3.ROOT_INODE, b"nope"))
    assert info.value.errno == errno.ENOENT


def test_each_file_version_is_its_own_inode_whose_pages_the_kernel_keeps():
    fs, ufs, clock = make(ttl=1)

    async def go():
        d = await fs.lookup(pyfuse3.ROOT_INODE, b"dir")
        ino = (await fs.lookup(d.st_ino, b"a.bin")).st_ino
        for flags in (os.O_WRONLY, os.O_RDWR):
            with pytest.raises(pyfuse3.FUSEError) as info:
                await fs.open(ino, flags)
            assert info.value.errno == errno.EROFS
        first = await fs.open(ino, os.O_RDONLY)
        second = await fs.open(ino, os.O_RDONLY)
        ufs.change("dir/a.bin", b"XYZ")
        # the old version's handle asks for its version: the source refuses with ESTALE
        with pytest.raises(pyfuse3.FUSEError) as info:
            await fs.read(first.fh, 0, 10)
        assert info.value.errno == errno.ESTALE
        clock.now += 2
        new = await fs.lookup(d.st_ino, b"a.bin")
        third = await fs.open(new.st_ino, os.O_RDONLY)
        data = await fs.read(third.fh, 0, 100)
        old_attr = await fs.getattr(ino)
        for fi in (first, second, third):
            await fs.release(fi.fh)
        await fs.forget([(ino, 1)])
        return first, second, third, data, new, old_attr, ino

    first, second, third, data, new, old_attr, ino = run(go)
    assert first.keep_cache and second.keep_cache and third.keep_cache
    assert new.st_ino != ino and new.st_size == 3 and old_attr.st_size != 3
    assert data == b"XYZ"
    stats = fs.statistics()
    assert stats.reads == 1 and stats.bytes_read == 3 and stats.errors >= 1
    assert stats.open_files == 0
    with pytest.raises(pyfuse3.FUSEError) as info:  # forgotten: the old version is gone
        run(lambda: fs.getattr(ino))
    assert info.value.errno == errno.ESTALE


def test_directories_cannot_be_opened_as_files():
    fs, _, _ = make()

    async def go():
        d = await fs.lookup(pyfuse3.ROOT_INODE, b"dir")
        await fs.open(d.st_ino, os.O_RDONLY)

    with pytest.raises(pyfuse3.FUSEError) as info:
        run(go)
    assert info.value.errno == errno.EISDIR


@pytest.mark.parametrize(("exc", "code"), [
    (FileNotFoundError("x"), errno.ENOENT),
    (NotADirectoryError("x"), errno.ENOTDIR),
    (IsADirectoryError("x"), errno.EISDIR),
    (PermissionError("x"), errno.EACCES),
    (VersionChanged(errno.ESTALE, "x"), errno.ESTALE),
    (VersionChanged("no errno"), errno.ESTALE),
    (UfsUnavailable("bucket gone"), errno.EIO),
    (OSError(errno.ETIMEDOUT, "slow"), errno.ETIMEDOUT),
    (ValueError("bug"), errno.EIO),
])
def test_errno_table(exc, code):
    assert errno_of(exc) == code


@pytest.mark.expect_error_log("request failed unexpectedly")
def test_an_unexpected_error_is_eio_and_the_filesystem_keeps_serving():
    fs, ufs, clock = make(ttl=0)

    async def go():
        ufs.fail = RuntimeError("boom")
        with pytest.raises(pyfuse3.FUSEError) as info:
            await fs.getattr(pyfuse3.ROOT_INODE)
        assert info.value.errno == errno.EIO
        ufs.fail = None
        return await fs.getattr(pyfuse3.ROOT_INODE)

    assert run(go).st_mode == 0o40555
    assert fs.statistics().errors == 1


def test_forget_drops_state_but_never_raises():
    fs, _, _ = make()

    async def go():
        ino = (await fs.lookup(pyfuse3.ROOT_INODE, b"empty")).st_ino
        await fs.lookup(pyfuse3.ROOT_INODE, b"empty")
        await fs.forget([(ino, 1)])
        held = fs.statistics().known_inodes
        await fs.forget([(ino, 1), (12345, 3), (pyfuse3.ROOT_INODE, 1)])
        return held, fs.statistics().known_inodes

    held, after = run(go)
    assert held == 2 and after == 1  # root stays


def test_a_listing_entry_that_did_not_fit_leaves_no_node_id_behind():
    """The kernel takes a lookup of each entry a readdirplus reply carries; one that did not
    fit was never sent and will never be forgotten, so the daemon must not keep it."""
    fs, _, _ = make()

    async def go():
        fh = await fs.opendir(pyfuse3.ROOT_INODE)
        await fs.readdir(fh, 0, pyfuse3.ReaddirToken())  # a reply with no room at all
        await fs.releasedir(fh)
        return (await fs.statfs(None)).f_files

    assert run(go) == 1  # the root only


def test_statfs_and_xattrs():
    fs, _, _ = make()

    async def go():
        st = await fs.statfs(None)
        codes = []
        for call in (fs.getxattr(pyfuse3.ROOT_INODE, b"user.x"), fs.listxattr(pyfuse3.ROOT_INODE)):
            with pytest.raises(pyfuse3.FUSEError) as info:
                await call
            codes.append(info.value.errno)
        return st, codes

    st, codes = run(go)
    assert st.f_bsize == 1 << 20 and st.f_namemax == 255
    assert codes == [errno.ENOSYS, errno.ENOSYS]  # the kernel then says EOPNOTSUPP itself


class MemoryUfs(FakeUfs):
    """A reader that holds some files' bytes in memory, as DatasetReader holds checked blocks."""

    def __init__(self, tree: dict):
        super().__init__(tree)
        self.in_memory: dict[tuple[str, str], bytes] = {}

    def read_cached(self, path, offset, length, version):
        self.calls.append(("read_cached", path))
        data = self.in_memory.get((path, version))
        return None if data is None else data[offset:offset + length]


def test_bytes_in_memory_are_answered_without_a_blocking_read():
    ufs = MemoryUfs(TREE)
    fs = DatasetFs(ufs, 60.0, clock=FakeClock())

    async def go():
        d = await fs.lookup(pyfuse3.ROOT_INODE, b"dir")
        fi = await fs.open((await fs.lookup(d.st_ino, b"a.bin")).st_ino, os.O_RDONLY)
        first = await fs.read(fi.fh, 0, 4)  # not in memory: a read in a worker thread
        ufs.in_memory[("dir/a.bin", "v1")] = b"abcdef"
        second = await fs.read(fi.fh, 2, 10)
        return first, second

    assert run(go) == (b"abcd", b"cdef")
    assert ufs.count("read_cached") == 2 and ufs.count("read") == 1
    stats = fs.statistics()
    assert stats.reads == 2 and stats.bytes_read == 8


def test_a_successor_serves_what_its_predecessor_opened(tmp_path):
    """A daemon that resumes a mount reads through the handles and node ids the dead one gave
    the kernel, from the journal the dead one wrote before each answer."""
    ufs = FakeUfs(TREE)
    first = DatasetFs(ufs, 60.0, table=SessionTable(Journal(str(tmp_path))))

    async def before():
        d = await first.lookup(pyfuse3.ROOT_INODE, b"dir")
        f = await first.lookup(d.st_ino, b"a.bin")
        return d.st_ino, f.st_ino, (await first.open(f.st_ino, os.O_RDONLY)).fh

    d, f, fh = run(before)
    second = DatasetFs(ufs, 60.0, table=SessionTable.resume(Journal(str(tmp_path))))

    async def after():
        assert await second.read(fh, 2, 3) == b"cde"
        assert (await second.getattr(f)).st_size == 6
        again = await second.lookup(d, b"a.bin")
        assert again.st_ino == f  # the same file version keeps its node id
        await second.release(fh)
        with pytest.raises(pyfuse3.FUSEError) as err:
            await second.read(fh, 0, 1)
        assert err.value.errno == errno.EBADF

    run(after)
    assert second.statistics().open_files == 0 and second.statistics().known_inodes == 3


@pytest.mark.parametrize("over_listing", [False, True], ids=["stat", "listing"])
def test_a_change_at_the_source_shows_within_one_ttl_through_engine_and_mount(
        tmp_path, over_listing):
    """The engine and the mount each keep metadata; stacked, they must still show a change
    within one metadataTTL of when the source was read, not one TTL in each."""
    clock = FakeClock()
    ufs = FakeUfs(TREE)
    engine = CacheEngine(make_tiers(str(tmp_path), 4), str(tmp_path / "state"),
                         open_ufs=lambda spec, secrets: ufs, clock=clock, maintenance=False)
    reader = DatasetReader(engine, make_spec("local:///data", metadataTTL="10"), {})
    fs = DatasetFs(reader, 10.0, clock=clock)
    ds = reader.info.dataset_id

    async def go():
        if over_listing:
            engine.list(ds, "dir")  # another mount listed the folder: the engine keeps it
        else:
            engine.stat(ds, "dir/a.bin")  # another mount looked the file up
        clock.advance(6)
        d = await fs.lookup(pyfuse3.ROOT_INODE, b"dir")
        if over_listing:
            await fs.releasedir(await fs.opendir(d.st_ino))
        first = await fs.lookup(d.st_ino, b"a.bin")  # from the engine's 6 s old answer
        assert first.st_size == 6 and first.entry_timeout == pytest.approx(4)
        ufs.change("dir/a.bin", b"changed at the source")
        clock.advance(3.9)
        assert (await fs.lookup(d.st_ino, b"a.bin")).st_size == 6  # still fresh: cached
        clock.advance(0.2)  # 10.1 s after the source was read, 4.1 s after the mount asked
        fs_now = await fs.lookup(d.st_ino, b"a.bin")
        assert fs_now.st_size == len(b"changed at the source")
        assert fs_now.entry_timeout == pytest.approx(10)  # read from the source just now

    try:
        run(go)
    finally:
        reader.close()
        engine.close()
