"""The mode and owner a mount shows for an entry: the volume's, else the source's, else the
defaults of a bucket (root's, readable by all)."""

from __future__ import annotations

import stat

import pytest

from cache_engine.spec import parse_parameters
from cache_engine.ufs.base import Entry, Kind
from csi.fuse.attributes import Permissions, entry_attributes

OWNED_FILE = Entry("f", Kind.FILE, 1, 1, "v", None, 0o640, 1000, 2000)
OWNED_DIR = Entry("d", Kind.DIR, mode=0o750, uid=1000, gid=2000)
BARE_FILE = Entry("o", Kind.FILE, 1, 1, "etag")  # an object store's: no mode, no owner
BARE_DIR = Entry("p", Kind.DIR)
LINK = Entry("l", Kind.SYMLINK, 1, 1, "", "f", 0o777, 1000, 2000)
VOLUME = Permissions(uid=7, gid=8, file_mode=0o400, dir_mode=0o500)

CASES = [  # (permissions, entry, st_mode, (uid, gid))
    (Permissions(), OWNED_FILE, stat.S_IFREG | 0o640, (1000, 2000)),
    (Permissions(), OWNED_DIR, stat.S_IFDIR | 0o750, (1000, 2000)),
    (Permissions(), BARE_FILE, stat.S_IFREG | 0o444, (0, 0)),
    (Permissions(), BARE_DIR, stat.S_IFDIR | 0o555, (0, 0)),
    (Permissions(), LINK, stat.S_IFLNK | 0o777, (1000, 2000)),
    (VOLUME, OWNED_FILE, stat.S_IFREG | 0o400, (7, 8)),
    (VOLUME, OWNED_DIR, stat.S_IFDIR | 0o500, (7, 8)),
    (VOLUME, BARE_FILE, stat.S_IFREG | 0o400, (7, 8)),
    (VOLUME, LINK, stat.S_IFLNK | 0o777, (7, 8)),
    (Permissions(gid=0), OWNED_FILE, stat.S_IFREG | 0o640, (1000, 0)),  # each key alone
    (Permissions(file_mode=0), OWNED_FILE, stat.S_IFREG, (1000, 2000)),  # 0 is a mode
    (Permissions(), Entry("z", Kind.FILE, mode=0, uid=0, gid=0), stat.S_IFREG, (0, 0)),
    (Permissions(), Entry("s", Kind.FILE, mode=0o6755), stat.S_IFREG | 0o755, (0, 0)),
    (Permissions(), Entry("t", Kind.DIR, mode=0o3777), stat.S_IFDIR | 0o777, (0, 0)),
]


@pytest.mark.parametrize("permissions, entry, mode, owner", CASES)
def test_mode_and_owner(permissions, entry, mode, owner):
    attr = entry_attributes(5, entry, permissions, 1.0)
    assert (attr.st_mode, (attr.st_uid, attr.st_gid)) == (mode, owner)
    assert (attr.st_ino, attr.entry_timeout, attr.attr_timeout) == (5, 1.0, 1.0)


def test_permissions_of_a_volume_come_from_its_parameters():
    spec = parse_parameters({"source": "s3://bucket", "uid": "1000", "dirMode": "0750"})
    assert Permissions.of(spec) == Permissions(uid=1000, dir_mode=0o750)
    assert Permissions.of(parse_parameters({"source": "local:///data"})) == Permissions()
