"""The node plugin's Prometheus metrics, read from an in-process engine at each scrape."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cache_engine.host import CacheEngine
from csi.metrics import NodeCollector
from tests.support.engine import BS, blob, make_spec, make_tiers, read_all
from tests.support.fake_source import FakeUfs


def scrape(engine) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(NodeCollector(engine))
    text = generate_latest(registry).decode()
    return {f"{s.name}{{{','.join(f'{k}={v!r}' for k, v in s.labels.items())}}}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_tier_out_of_service_shows_until_it_is_back(tmp_path):
    source = FakeUfs({"f": blob(BS)})  # one block: a block file, written through tmp/
    tiers = make_tiers(str(tmp_path), 4, 4)
    with CacheEngine(tiers, str(tmp_path / "state"), open_ufs=lambda spec, secrets: source,
                     maintenance=False) as engine:
        ds = engine.open_dataset(make_spec(), {}).dataset_id
        version = engine.stat(ds, "f").version
        assert scrape(engine)["eddy_tier_in_service{tier='MEM'}"] == 1
        os.rmdir(tiers[0].tmp_dir)
        with open(tiers[0].tmp_dir, "w"):
            pass  # writes into MEM's tmp/ now fail with ENOTDIR
        assert engine.locate(ds, "f", version, 0, BS).file.startswith(tiers[1].path)
        metrics = scrape(engine)
        assert metrics["eddy_tier_in_service{tier='MEM'}"] == 0
        assert metrics["eddy_tier_faults_total{tier='MEM'}"] == 1
        assert metrics["eddy_tier_in_service{tier='SSD'}"] == 1
        assert metrics["eddy_index_write_failures_total{}"] == 0
        assert metrics["eddy_index_in_memory{}"] == 0
        os.unlink(tiers[0].tmp_dir)
        engine.maintain()
        assert scrape(engine)["eddy_tier_in_service{tier='MEM'}"] == 1


def test_the_bytes_an_extent_holds_for_blocks_gone_are_a_gauge(tmp_path):
    source = FakeUfs({"f": blob(3 * BS)})  # three blocks: one extent in a tier held in RAM
    with CacheEngine(make_tiers(str(tmp_path), 4, 4), str(tmp_path / "state"),
                     open_ufs=lambda spec, secrets: source, maintenance=False,
                     held_in_ram=lambda path: True, pin_seconds=0) as engine:
        ds = engine.open_dataset(make_spec(), {}).dataset_id
        assert read_all(engine, ds, source, "f") == source.data("f")
        assert engine.extent(ds, "f", engine.stat(ds, "f").version, 3 * BS) is not None
        assert scrape(engine)["eddy_tier_held_bytes{tier='MEM'}"] == 0
        engine.open_dataset(make_spec(capacity=2 * BS), {})  # one block leaves the extent
        metrics = scrape(engine)
        assert metrics["eddy_tier_used_bytes{tier='MEM'}"] == 2 * BS
        assert metrics["eddy_tier_held_bytes{tier='MEM'}"] == BS
        assert metrics["eddy_tier_held_bytes{tier='SSD'}"] == 0
