"""Volumes that share a dataset keep their own settings (README "Volumes that share a dataset").

Each volume opens the dataset with its own spec; the engine applies the most generous of them
(`dataset.shared_spec`), so a small volume opened later never evicts another's cache, and a
volume's settings stop counting once it is unstaged (`release_volume`).
"""

from __future__ import annotations

from cache_engine.dataset import shared_spec
from tests.support.engine import BS, FakeClock, make_spec, read_all


def test_a_small_volume_opened_later_does_not_shrink_another_volumes_cache(engines, source):
    engine = engines()  # MEM 4 blocks + SSD 8 blocks
    big = engine.open_dataset(make_spec(capacity=6 * BS), {}, "vol-big").dataset_id
    read_all(engine, big, source, "data/a.bin")  # 6 blocks, the last one short
    small = engine.open_dataset(make_spec(capacity=BS), {}, "vol-small").dataset_id
    assert small == big  # one dataset: the blocks are shared
    stats = engine.statistics().datasets[big]
    assert (stats.used, stats.capacity) == (len(source.data("data/a.bin")), 6 * BS)
    assert engine.dataset_status(big).volumes == ("vol-big", "vol-small")

    engine.release_volume("vol-big")  # unstaged: the small volume's share applies at once
    stats = engine.statistics().datasets[big]
    assert stats.capacity == BS and stats.used <= BS
    assert engine.dataset_status(big).volumes == ("vol-small",)


def test_reopening_a_volume_replaces_only_its_own_settings(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(capacity=4 * BS), {}, "vol-a").dataset_id
    engine.open_dataset(make_spec(capacity=2 * BS), {}, "vol-b")
    engine.open_dataset(make_spec(capacity=3 * BS), {}, "vol-a")  # vol-a restaged smaller
    read_all(engine, ds, source, "data/a.bin")
    stats = engine.statistics().datasets[ds]
    assert stats.capacity == 3 * BS and stats.used <= 3 * BS


def test_the_last_volume_leaving_keeps_its_settings_and_blocks(engines, source):
    engine = engines()
    ds = engine.open_dataset(make_spec(capacity=2 * BS), {}, "vol-a").dataset_id
    read_all(engine, ds, source, "data/b.bin")
    engine.release_volume("vol-a")
    engine.release_volume("never-staged")  # nothing to do
    stats = engine.statistics().datasets[ds]
    assert (stats.capacity, stats.used) == (2 * BS, 2 * BS)


def test_the_most_generous_setting_of_each_volume_applies():
    a = make_spec(tiers="MEM", metadataTTL="600", readAhead="2", sourceTimeout="5",
                  sourceConcurrency="4", capacity=5 * BS)
    b = make_spec(tiers="SSD", metadataTTL="30", readAhead="16", sourceTimeout="1",
                  sourceConcurrency="2", capacity=9 * BS)
    both = shared_spec([a, b])
    assert both.tiers == ("MEM", "SSD") and both.cache_capacity == 9 * BS
    assert both.metadata_ttl == 30.0  # the freshest any volume asked for
    assert (both.read_ahead, both.source_timeout, both.source_concurrency) == (16, 5.0, 4)
    assert both.prefetch == "off"
    modes = [make_spec(prefetch=mode) for mode in ("safetensors", "whole", "off")]
    assert shared_spec(modes[:1] + modes[2:]).prefetch == "safetensors"
    assert shared_spec(modes).prefetch == "whole"  # whichever volume came last
    every = shared_spec([a, make_spec(metadataTTL="immutable")])  # no capacity, no tiers
    assert every.tiers == () and every.cache_capacity is None and every.metadata_ttl == 600.0
    assert shared_spec([make_spec(metadataTTL="immutable")]).metadata_ttl is None


def test_the_region_is_part_of_the_datasets_identity(engines):
    engine = engines()
    plain = engine.open_dataset(make_spec("s3://bucket/p"), {}, "v1").dataset_id
    east = engine.open_dataset(make_spec("s3://bucket/p", region="us-east-1"), {}, "v2")
    west = engine.open_dataset(make_spec("s3://bucket/p", region="eu-west-1"), {}, "v3")
    assert len({plain, east.dataset_id, west.dataset_id}) == 3


def test_blocks_pinned_when_the_capacity_fell_are_evicted_by_the_next_maintenance(engines,
                                                                                   source):
    clock = FakeClock()
    engine = engines(clock=clock, pin_seconds=1.0)
    ds = engine.open_dataset(make_spec(capacity=4 * BS), {}, "vol-big").dataset_id
    engine.open_dataset(make_spec(capacity=BS), {}, "vol-small")
    read_all(engine, ds, source, "data/b.bin")  # 3 blocks, just handed out: pinned
    engine.release_volume("vol-big")
    assert engine.statistics().datasets[ds].used == 3 * BS
    clock.advance(1.5)
    engine.maintain()
    assert engine.statistics().datasets[ds].used <= BS
