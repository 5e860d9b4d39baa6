"""The scenarios: the same reads of the same dataset, by every system, in the same states.

    references  tmpfs direct: the source copy read with no FUSE and no network (best of 2)
                S3 raw: the same client eddy uses, parallel GETs, no filesystem (the mean of
                one run before and one after eddy's scenarios, so a drift of the shared
                machine does not favour either side)
    each system cold: a fresh mount with an empty cache, page cache dropped; for the big
                      file twice, the second time once every system had its first and in
                      the reverse order, the mean kept (`cold_again`), after one untimed
                      cold read by every system (`warm_up`)
                warm: unmounted, page cache dropped, a fresh mount reusing the cache dir;
                      timed on two fresh mounts, the faster kept (on a shared machine one
                      warm read can be off by a third)
                hot:  (eddy only) the same read again on the last of those mounts, page
                      cache kept; best of 2, as the tmpfs reference. The targets compare the
                      peers cold and warm only, and their hot reads would add a minute to a
                      bench that must fit in 15

For eddy the cold mount also runs `eddy preload --wait` (untimed) before it is unmounted, so
the warm mount finds every block in its MEM tier even if the cold read left a block out; the
job's state and `eddy status` go into the rows' details. eddy's hot read is checked byte for
byte against the source; every other read is checked by its byte and file counts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from .measure import (
    Timing,
    drop_caches,
    mem_available_mib,
    page_cache_mib,
    read_file,
    read_tree,
    same_bytes,
)
from .mounts import Eddy, Mounted, System
from .results import PHASES, Results, Row
from .source import BIG, BIG_NAME, SMALL, Source, small_names

WARM_RUNS = 2  # warm is timed on this many fresh mounts, and the fastest is kept
HOT_RUNS = 2  # hot is read this many times on the last of them, the fastest kept (as tmpfs)


@dataclass(frozen=True)
class Dataset:
    key: str  # "big" or "small", the rows' dataset
    prefix: str  # under the bench bucket
    local: str  # the source copy on tmpfs
    bytes: int
    files: int
    read: Callable[[str], Timing]  # read the dataset under this root
    raw: Callable[[], Timing]  # the S3 reference
    same: Callable[[str], bool]  # the dataset under this root equals the source copy


def datasets(source: Source) -> list[Dataset]:
    def big_same(root: str) -> bool:
        return same_bytes(source.big_path, os.path.join(root, BIG_NAME))

    def small_same(root: str) -> bool:
        return all(same_bytes(os.path.join(source.small_root, name), os.path.join(root, name))
                   for name in small_names(source.small_files))

    return [
        Dataset("big", BIG, os.path.dirname(source.big_path), source.big_bytes, 1,
                lambda root: read_file(os.path.join(root, BIG_NAME)), source.raw_big, big_same),
        Dataset("small", SMALL, source.small_root, source.small_bytes, source.small_files,
                read_tree, source.raw_small, small_same),
    ]


def references(ds: Dataset, results: Results) -> None:
    """tmpfs direct (best of 2) and the first S3 raw run."""
    direct = max((ds.read(ds.local) for _ in range(2)), key=lambda t: t.mb_s)
    results[f"{ds.key}/tmpfs/direct"].record(direct, ds.bytes, ds.files)
    _progress(results[f"{ds.key}/tmpfs/direct"], ds)
    first = ds.raw()
    row = results[f"{ds.key}/s3/raw"]
    row.details["runs_mb_s"] = [first.mb_s]
    print(f"  {row.id:<20} {first.seconds:8.2f} s {first.mb_s:9.1f} MB/s (first run)",
          flush=True)


def finish_references(ds: Dataset, results: Results) -> None:
    """The second S3 raw run; the row gets the mean time of both."""
    row = results[f"{ds.key}/s3/raw"]
    second = ds.raw()
    runs = [*row.details["runs_mb_s"], second.mb_s]
    mean_seconds = sum(second.bytes / (r * 1e6) for r in runs) / len(runs)
    row.record(Timing(mean_seconds, second.bytes, second.files), ds.bytes, ds.files)
    row.details["runs_mb_s"] = runs
    print(f"  {row.id:<20} {second.seconds:8.2f} s {second.mb_s:9.1f} MB/s (second run)",
          flush=True)


def run_system(system: System, ds: Dataset, results: Results, cache_root: str) -> None:
    """cold, warm (and hot, where the results have a row for it) for one system; a failure
    marks the phases left with the error."""
    rows = {phase: results.rows[f"{ds.key}/{system.name}/{phase}"] for phase in PHASES
            if f"{ds.key}/{system.name}/{phase}" in results.rows}
    cache = os.path.join(cache_root, f"{system.name}-{ds.key}")
    phase = "cold"
    try:
        drop_caches()
        with system.mount(ds.prefix, cache, ds.bytes) as mounted:
            _measure(rows["cold"], system, ds, mounted)
            if isinstance(system, Eddy):
                rows["cold"].details["preload"] = _preload_state(system, mounted)
                rows["cold"].details["status"] = system.status(mounted)
        for run in range(1, WARM_RUNS + 1):
            phase = "oneshot" if run == 1 else "warm"  # a failure marks this phase and after
            drop_caches()
            with system.mount(ds.prefix, cache, ds.bytes) as mounted:
                _measure(rows["warm"], system, ds, mounted, run,
                         rows.get("oneshot") if run == 1 else None)
                if run < WARM_RUNS:
                    continue
                if "hot" in rows:
                    phase = "hot"
                    for hot_run in range(1, HOT_RUNS + 1):
                        _measure(rows["hot"], system, ds, mounted, hot_run)
                if isinstance(system, Eddy):
                    rows["hot"].details["status"] = system.status(mounted)
                    if not ds.same(mounted.path):
                        rows["hot"].error = "the bytes read differ from the source"
    except Exception as e:  # noqa: BLE001 - one system's failure must not stop the others
        message = describe(e)
        print(f"  {system.name} {ds.key} {phase}: FAILED: {message}")
        if os.environ.get("EDDY_BENCH_DEBUG"):
            traceback.print_exc()
        tail = system.log_tail()
        if tail:
            print("  " + tail.replace("\n", "\n  "))
        for p in PHASES[PHASES.index(phase):]:
            if p in rows:
                rows[p].error = rows[p].error or message
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def warm_up(system: System, ds: Dataset, results: Results, cache_root: str) -> None:
    """One cold read that no figure keeps, before any system's timed one (its speed goes into
    the cold row's details). On this VM the first reads to fill memory after the upload ran
    at half speed or less, whichever system made them: the host backs memory the guest
    handed back (free page reporting) only when it is touched again. Every system makes one
    such read, so the timed ones all find the machine as the earlier ones left it."""
    row = results.rows[f"{ds.key}/{system.name}/cold"]
    cache = os.path.join(cache_root, f"{system.name}-{ds.key}-warm-up")
    try:
        drop_caches()
        with system.mount(ds.prefix, cache, ds.bytes) as mounted:
            timing = ds.read(mounted.path)
    except Exception as e:  # noqa: BLE001 - the timed runs say what fails
        print(f"  {ds.key}/{system.name}/warm-up: FAILED: {describe(e)}", flush=True)
        return
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    row.details["warm_up_mb_s"] = round(timing.mb_s, 1)
    print(f"  {ds.key + '/' + system.name + '/warm-up':<20} {timing.seconds:8.2f} s "
          f"{timing.mb_s:9.1f} MB/s (untimed)", flush=True)


def cold_again(system: System, ds: Dataset, results: Results, cache_root: str) -> None:
    """A second cold read, run once every system had its first, in the reverse order; the
    cold row keeps the mean of the two. The first system to run after the upload touches
    memory this VM's host has not backed yet (freed pages are handed back to the host: the
    balloon's free page reporting), which cost it up to half its throughput here, whichever
    system it was: alternating the order leaves neither that nor a drift to one side."""
    row = results.rows[f"{ds.key}/{system.name}/cold"]
    if not row.measured:
        return
    cache = os.path.join(cache_root, f"{system.name}-{ds.key}-again")
    try:
        drop_caches()
        with system.mount(ds.prefix, cache, ds.bytes) as mounted:
            timing = ds.read(mounted.path)
    except Exception as e:  # noqa: BLE001 - the first run's figures stay, marked
        row.details["second_run_error"] = describe(e)
        print(f"  {row.id}: second run FAILED: {describe(e)}", flush=True)
        return
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    runs = [row.seconds, timing.seconds]
    row.record(Timing(sum(runs) / 2, timing.bytes, timing.files), ds.bytes, ds.files)
    row.details["runs_seconds"] = [round(t, 2) for t in runs]
    _progress(row, ds, f"second run {timing.mb_s:.1f} MB/s, the mean kept")


def _measure(row: Row, system: System, ds: Dataset, mounted: Mounted, run: int = 0,
             also: Row | None = None) -> None:
    """Time one read into `row` (and into `also`, which takes that one read as it is). For
    run 1, 2, ... of a repeated phase the row keeps the fastest run and lists every run's
    MB/s in its details."""
    row.details["mem_available_mib_before"] = mem_available_mib()
    timing = ds.read(mounted.path)
    if run:
        row.record_run(timing, ds.bytes, ds.files)
    else:
        row.record(timing, ds.bytes, ds.files)
    if also is not None:
        also.record(timing, ds.bytes, ds.files)
        _progress(also, ds)
    row.note_peak_rss(mounted.peak_rss_mib())
    if ds.files == 1:
        row.details["page_cache_mib_after"] = page_cache_mib(os.path.join(mounted.path,
                                                                          BIG_NAME))
    _progress(row, ds, f"run {run}: {timing.mb_s:.1f} MB/s" if run else "")


def _progress(row: Row, ds: Dataset, note: str = "") -> None:
    print(f"  {row.id:<20} {row.seconds:8.2f} s {row.mb_s:9.1f} MB/s"
          + (f" {row.files_s:9.0f} files/s" if ds.files > 1 else "")
          + (f"  ({row.error})" if row.error else "")
          + (f"  ({note})" if note else ""), flush=True)


def _preload_state(system: Eddy, mounted: Mounted) -> dict:
    job = system.preload(mounted)
    return {k: job.get(k) for k in ("state", "message", "bytes_cached", "bytes_total",
                                    "files_done", "files_total")}


def describe(e: Exception) -> str:
    if isinstance(e, subprocess.CalledProcessError):
        err = (e.stderr or "").strip().splitlines()
        return f"{e.cmd} exited {e.returncode}: {err[-1] if err else 'no message'}"
    return f"{type(e).__name__}: {e}"
