"""Prometheus metrics of a node plugin, read from the cache engine and the mounts on scrape.

Labels are bounded: tier names come from node configuration and dataset ids are hashes of
volume definitions; no label ever holds a path, a source URI with a key, or a secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from cache_engine.types import JobState

from .mounter.states import MountState, Phase

if TYPE_CHECKING:  # for annotations only: csi gets its engine from cache_engine.host
    from cache_engine.host import CacheEngine

# engine counter -> (metric name without _total, help)
COUNTERS = {
    "hits": ("eddy_cache_hits", "Block lookups answered from a tier."),
    "misses": ("eddy_cache_misses", "Block lookups that had to read the source."),
    "source_bytes": ("eddy_source_bytes", "Bytes read from sources."),
    "source_reads": ("eddy_source_reads", "Block reads from sources."),
    "uncached_reads": ("eddy_uncached_reads", "Blocks served from the source without caching."),
    "tier_write_failures": ("eddy_tier_write_failures", "Block writes a tier refused."),
    "index_write_failures": ("eddy_index_write_failures",
                             "Block index writes SQLite refused (the block served uncached)."),
    "evictions": ("eddy_cache_evictions", "Blocks dropped from the cache."),
    "demotions": ("eddy_cache_demotions", "Blocks moved down to a slower tier."),
    "promotions": ("eddy_cache_promotions", "Blocks moved up to a faster tier."),
    "checksum_failures": ("eddy_checksum_failures", "Cached blocks that failed their checksum."),
    "prefetches": ("eddy_prefetches", "Blocks loaded ahead of sequential readers."),
    "prefetches_skipped": ("eddy_prefetches_skipped",
                           "Read-ahead not started: the dataset's source slots were busy."),
    "prefetch_open_waits": ("eddy_prefetch_open_waits", "Opens that waited for their file's "
                            "whole-file prefetch (prefetchWait)."),
    "prefetch_open_waits_loaded": ("eddy_prefetch_open_waits_loaded", "Opens that waited and "
                                   "got their file loaded whole in time (then passed through)."),
    "extents_built": ("eddy_extents_built", "Files compacted into one tier file (an extent)."),
    "extents_served": ("eddy_extents_served",
                       "Opens handed an extent for the kernel to read (FUSE passthrough)."),
    "extents_checked": ("eddy_extents_checked", "Disk extents read back and checked by the "
                        "scrubber."),
    "extent_repairs": ("eddy_extent_repairs", "Bad blocks of disk extents rewritten with "
                       "their bytes from the source."),
    "extent_failures": ("eddy_extent_failures", "Disk extents with a bad block the source "
                        "could not repair: truncated, their blocks dropped."),
}


class NodeCollector:
    """The Prometheus collector of a node plugin: reads the engine's statistics, preload jobs and
    the mounter's mount states at each scrape, so no counter is kept twice. `serve` registers it."""

    def __init__(self, engine: CacheEngine,
                 mount_states: Callable[[], list[MountState]] | None = None):
        self.engine = engine
        self.mount_states = mount_states

    def collect(self):
        stats = self.engine.statistics()
        for key, (name, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=getattr(stats, key))
        served = CounterMetricFamily("eddy_cache_served_bytes",
                                     "Bytes of blocks located in each tier (cache hits).",
                                     labels=["tier"])
        used = GaugeMetricFamily("eddy_tier_used_bytes", "Bytes stored in each tier.",
                                 labels=["tier"])
        held = GaugeMetricFamily("eddy_tier_held_bytes", "Bytes of blocks that left an extent "
                                 "another block still uses: still in the tier's files and "
                                 "counted against its size until the extent goes.",
                                 labels=["tier"])
        size = GaugeMetricFamily("eddy_tier_size_bytes", "Size of each tier.", labels=["tier"])
        faults = CounterMetricFamily("eddy_tier_faults", "Times a tier was taken out of "
                                     "service because a write to it failed.", labels=["tier"])
        in_service = GaugeMetricFamily("eddy_tier_in_service", "1 while a tier takes new "
                                       "blocks, 0 while it is out of service.", labels=["tier"])
        for tier, t in stats.tiers.items():
            served.add_metric([tier], t.served_bytes)
            used.add_metric([tier], t.used)
            held.add_metric([tier], t.held)
            size.add_metric([tier], t.size)
            faults.add_metric([tier], t.faults)
            in_service.add_metric([tier], 1 if t.in_service else 0)
        yield from (served, used, held, size, faults, in_service)
        yield GaugeMetricFamily("eddy_index_in_memory", "1 while the block index is kept in "
                                "memory: the state disk refused it at start.",
                                value=1 if stats.index_in_memory else 0)
        yield GaugeMetricFamily("eddy_extents_overdue", "Disk extents whose last check is "
                                "older than --extent-trust: the kernel gets none of them until "
                                "the scrubber checks it.", value=stats.extents_overdue)
        cached = GaugeMetricFamily("eddy_dataset_cached_bytes",
                                   "Bytes cached per dataset, all tiers.", labels=["dataset"])
        for ds, d in stats.datasets.items():
            cached.add_metric([ds], d.used)
        yield cached
        yield from self._preload(stats.datasets)
        buckets = [("+Inf" if b == float("inf") else repr(b), n) for b, n in stats.fetch_seconds]
        yield HistogramMetricFamily("eddy_block_fetch_seconds",
                                    "Time to read one block from its source.",
                                    buckets=buckets, sum_value=stats.fetch_seconds_sum)
        if self.mount_states is not None:
            states = self.mount_states()
            yield CounterMetricFamily("eddy_mount_daemon_restarts",
                                      "Mount daemons started again after one died (resumed "
                                      "or mounted anew).", value=sum(s.restarts for s in states))
            phases = GaugeMetricFamily("eddy_mounts", "Staged volumes by the state of their "
                                       "mount (serving, restarting, waiting).", labels=["phase"])
            for phase in Phase:
                phases.add_metric([phase.value], sum(s.phase is phase for s in states))
            yield phases

    def _preload(self, datasets):
        done = GaugeMetricFamily("eddy_preload_cached_bytes",
                                 "Bytes of the latest preload's scope now cached.",
                                 labels=["dataset"])
        total = GaugeMetricFamily("eddy_preload_total_bytes",
                                  "Bytes in the latest preload's scope (so far, while listing).",
                                  labels=["dataset"])
        running = GaugeMetricFamily("eddy_preload_running", "1 while a preload runs.",
                                    labels=["dataset"])
        for ds in datasets:
            try:
                p = self.engine.preload_progress(ds)
            except Exception:  # noqa: BLE001 - a dataset closed between the two calls
                continue
            if p is None:
                continue
            done.add_metric([ds], p.bytes_cached)
            total.add_metric([ds], p.bytes_total)
            running.add_metric([ds], 1 if p.state is JobState.RUNNING else 0)
        yield from (done, total, running)


def serve(engine: CacheEngine, mount_states: Callable[[], list[MountState]] | None, port: int,
          address: str = "0.0.0.0"):
    """Serve /metrics on `address:port` in a thread; returns the HTTP server (shutdown())."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(engine, mount_states))
    server, _thread = start_http_server(port, address, registry=registry)
    return server
