"""What a writer-mode mount changed is known to the whole node at once (cache_engine/changes.py):
records forgotten, stale blocks dropped, a written file's new version cached (write-through)."""

from __future__ import annotations

import os

import pytest

from cache_engine.ufs.local import LocalUfs
from tests.support.engine import BS, blob, make_spec, read_all


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.bin").write_bytes(blob(3 * BS))
    return root


@pytest.fixture
def local(engines, tree):
    ufs = LocalUfs(str(tree))
    engine = engines(ufs=ufs)
    ds = engine.open_dataset(make_spec(f"local://{tree}", metadataTTL="600"), {}).dataset_id
    yield engine, ds
    ufs.close()


def test_a_written_file_is_seen_at_once_and_its_new_version_cached(local, tree):
    engine, ds = local
    old = engine.stat(ds, "d/f.bin")
    assert read_all(engine, ds, None, "d/f.bin") == blob(3 * BS)
    new_bytes = blob(2 * BS + 5, seed=9)
    (tree / "d" / "f.bin").write_bytes(new_bytes)
    assert engine.stat(ds, "d/f.bin") == old  # within the TTL, as any change at the source

    engine.changed(ds, ["d/f.bin"], load=True)
    new = engine.stat(ds, "d/f.bin")
    assert new.version != old.version and new.size == len(new_bytes)
    assert all(b.key.version == new.version for b in engine.blocks(ds))  # old ones dropped
    engine.drain()
    assert sorted(b.key.index for b in engine.blocks(ds)) == [0, 1, 2]  # loaded ahead
    misses = engine.statistics().misses
    assert read_all(engine, ds, None, "d/f.bin") == new_bytes
    assert engine.statistics().misses == misses  # every block a hit


def test_a_removed_or_moved_tree_is_forgotten_with_everything_below_it(local, tree):
    engine, ds = local
    assert [e.name for e in engine.list(ds, "d")] == ["f.bin"]
    read_all(engine, ds, None, "d/f.bin")
    os.rename(tree / "d", tree / "e")
    engine.changed(ds, ["d", "e"], tree=True)
    with pytest.raises(FileNotFoundError):
        engine.stat(ds, "d/f.bin")
    assert [e.name for e in engine.list(ds, "")] == ["e"]
    assert engine.blocks(ds) == []  # blocks are keyed by path: the moved file loads again
    assert read_all(engine, ds, None, "e/f.bin") == blob(3 * BS)
