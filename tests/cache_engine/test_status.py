"""Status asks the source little: one size walk per dataset, shared by every caller and
started again only after `MIN_RESCAN_SECONDS` (or the TTL, if longer).

Kubelet asks every staged volume for its stats each minute and `eddy status` may be run in a
loop: neither must list a whole bucket each time.
"""

from __future__ import annotations

import threading

from cache_engine.status import MIN_RESCAN_SECONDS
from tests.support.engine import FakeClock, blob, make_spec
from tests.support.fake_source import FakeUfs
from tests.support.wait import wait_for

TREE = {f"d{d}/f{f}.bin": blob(100 + f, seed=f) for d in range(4) for f in range(5)}


def test_status_callers_share_one_size_walk_until_it_is_due_again(engines):
    src = FakeUfs(TREE)
    clock = FakeClock()
    engine = engines(ufs=src, clock=clock)
    ds = engine.open_dataset(make_spec(metadataTTL="60"), {}).dataset_id
    src.hold()  # the walk hangs at its first listing while everybody asks
    askers = [threading.Thread(target=engine.dataset_status, args=(ds,)) for _ in range(8)]
    for t in askers:
        t.start()
    for t in askers:
        t.join(10)
    engine.status()
    src.release()
    engine.status(wait=None)
    walk = src.count("list")
    assert walk == 5  # the root and its 4 directories, once

    for _ in range(20):
        assert engine.dataset_status(ds).ufs_files == len(TREE)
    engine.status(wait=None)
    clock.advance(MIN_RESCAN_SECONDS - 1)
    engine.status(wait=None)
    assert src.count("list") == walk  # well past the 60 s TTL, still the same walk

    clock.advance(2)
    engine.status()
    wait_for(lambda: src.count("list") == 2 * walk, 10, "the next walk")
    [row] = engine.status(wait=None)
    assert row.ufs_total_bytes == sum(map(len, TREE.values()))
