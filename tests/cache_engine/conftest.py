"""Fixtures for the cache engine tests: a counting fake source and engines over it."""

from __future__ import annotations

import pytest

from cache_engine.engine import CacheEngine
from tests.support.engine import BS, blob, make_tiers
from tests.support.fake_source import FakeUfs
from tests.support.mounts import Tmpfs


@pytest.fixture
def source():
    return FakeUfs({"data/a.bin": blob(5 * BS + 123), "data/b.bin": blob(3 * BS, seed=1),
                    "small.txt": b"hello"})


@pytest.fixture
def engines(tmp_path, source):
    """Make engines over `source` (by default MEM 4 blocks, SSD 8 blocks); closed at the end."""
    made = []

    def make(tiers=None, ufs=None, **kw):
        kw.setdefault("maintenance", False)
        kw.setdefault("pin_seconds", 0)  # exact LRU: no grace for just-located blocks
        kw.setdefault("open_ufs", lambda spec, secrets: ufs or source)
        engine = CacheEngine(tiers if tiers is not None else make_tiers(str(tmp_path), 4, 8),
                             str(tmp_path / "state"), **kw)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


@pytest.fixture
def tmpfs():
    """Mount size-limited tmpfs filesystems (`Tmpfs.mount`); all unmounted at the end."""
    mounts = Tmpfs()
    yield mounts
    mounts.unmount_all()
