"""The model-file scenario (issue 18): a loader maps the safetensors file and copies its
tensors out in shuffled order, cold from S3, beside a plain sequential cold read of it.

    eddy sequential       1 MiB read()s of the whole file (prefetch off, the default)
    eddy loader-prefetch  `measure.load_tensors` on an eddy mount with `prefetch: safetensors`
                          (its open waits for the file, `prefetchWait`, then passes through)
    eddy loader           the same loader, prefetch off
    s3fs loader           the same loader on s3fs (`-o use_cache`), when s3fs runs

Every run is cold: a fresh mount, an empty cache dir, the page cache dropped. The sequential
read and the loader with prefetch, whose ratio the target checks, run twice, first and last
with the others in between, and their rows get the mean time, so a drift of the shared
machine favours neither. Each loader's tensors are checked against the source copy's, and
each eddy row keeps its last mount's `unmounted` event (FUSE reads, passthrough opens).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from .measure import Timing, drop_caches, load_tensors, read_file
from .mounts import Eddy, S3fs, System
from .results import MODEL, Results, Row
from .scenarios import describe
from .source import BIG, BIG_NAME, Source

PREFETCH = {"prefetch": "safetensors"}


def run(source: Source, peers: list[type[System]], results: Results, workdir: str,
        cache_root: str) -> None:
    """Every model row, in the order that spreads a drift over the pair the target checks."""
    digest = load_tensors(source.big_path)[1]
    sequential = Eddy(source, workdir)
    prefetching = Eddy(source, workdir, PREFETCH)
    runs: list[tuple[str, System, Callable[[str], Timing]]] = [
        ("eddy/sequential", sequential, read_file),
        ("eddy/loader-prefetch", prefetching, _loader(digest)),
        ("eddy/loader", Eddy(source, workdir), _loader(digest)),
    ]
    if S3fs in peers:
        runs.append(("s3fs/loader", S3fs(source, workdir), _loader(digest)))
    runs += [runs[1], runs[0]]
    times: dict[str, list[float]] = {}
    for name, system, read in runs:
        row = results[f"{MODEL}/{name}"]
        if row.error:
            continue  # its first run failed
        try:
            timing = _cold(system, source, os.path.join(cache_root, f"model-{system.name}"),
                           read, row)
        except Exception as e:  # noqa: BLE001 - one run's failure must not stop the others
            row.error = describe(e)
            print(f"  {row.id:<26} FAILED: {row.error}", flush=True)
            continue
        times.setdefault(name, []).append(timing.seconds)
        mean = Timing(sum(times[name]) / len(times[name]), timing.bytes)
        row.record(mean, source.big_bytes, 1)
        row.details["runs_seconds"] = [round(t, 2) for t in times[name]]
        print(f"  {row.id:<26} {timing.seconds:8.2f} s {timing.mb_s:9.1f} MB/s"
              f"  (run {len(times[name])})", flush=True)


def _loader(digest: int) -> Callable[[str], Timing]:
    """`load_tensors`, failing when the tensors differ from the source copy's."""
    def load(path: str) -> Timing:
        timing, got = load_tensors(path)
        if got != digest:
            raise AssertionError("the tensors read differ from the source")
        return timing
    return load


def _cold(system: System, source: Source, cache: str, read: Callable[[str], Timing],
          row: Row) -> Timing:
    """One cold read of the model file through a fresh mount of `system`."""
    shutil.rmtree(cache, ignore_errors=True)
    drop_caches()
    try:
        with system.mount(BIG, cache, source.big_bytes) as mounted:
            timing = read(os.path.join(mounted.path, BIG_NAME))
            row.note_peak_rss(mounted.peak_rss_mib())
            if isinstance(system, Eddy):
                row.details["status"] = system.status(mounted)
        if isinstance(system, Eddy):  # FUSE reads, passthrough and direct_io opens
            row.details["mount"] = system.session(mounted)
        return timing
    finally:
        shutil.rmtree(cache, ignore_errors=True)
