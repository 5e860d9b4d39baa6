"""Benchmark: preload throughput from a local S3 server vs the same client's raw ranged GETs.

In one run, on one SeaweedFS server on loopback with --size bytes in --files objects:

  raw      parallel 8 MiB ranged GETs of every object with obstore (the client eddy uses),
           --workers at a time, bytes discarded: what the source and client can deliver
  preload  an engine preload of the whole dataset into a MEM tier on /dev/shm with the same
           number of workers: source reads, checksums, tier writes and the index

The raw figure is measured before and after the preload and averaged, so a drift of the
shared machine does not favour either side. Prints a table and writes --out (JSON); the
target is preload >= 0.8 x raw. Run: `python -m e2e.bench_preload --size 1Gi`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import obstore

from cache_engine.engine import CacheEngine
from cache_engine.quantity import parse_quantity
from cache_engine.spec import parse_parameters
from cache_engine.tiers import Tier
from cache_engine.types import JobState
from tests.support.s3server import S3Server

RANGE = 8 << 20
TARGET = 0.8


def raw_mb_s(store, keys: dict[str, int], workers: int) -> float:
    ranges = [(key, off, min(RANGE, size - off)) for key, size in keys.items()
              for off in range(0, size, RANGE)]

    def get(item) -> int:
        key, off, n = item
        return len(obstore.get_range(store, key, start=off, length=n))

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(get, ranges))
    return total / (time.perf_counter() - start) / 1e6


def preload_mb_s(s3: S3Server, bucket: str, workdir: str, size: int, workers: int) -> dict:
    tier = Tier("MEM", os.path.join(workdir, "mem"), size + (256 << 20))
    spec = parse_parameters({"source": f"s3://{bucket}/data", "endpoint": s3.endpoint,
                             "region": "us-east-1"})
    with CacheEngine([tier], os.path.join(workdir, "state")) as engine:
        ds = engine.open_dataset(spec, s3.secrets).dataset_id
        start = time.perf_counter()
        engine.preload(ds, (), workers)
        engine.wait_preload(ds)
        seconds = time.perf_counter() - start
        p = engine.preload_progress(ds)
    if p.state is not JobState.COMPLETE:
        raise RuntimeError(f"preload ended {p.state.value}: {p.message}")
    return {"mb_s": p.bytes_fetched / seconds / 1e6, "seconds": seconds,
            "bytes": p.bytes_fetched}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1Gi", help="dataset size (default: %(default)s)")
    p.add_argument("--files", type=int, default=4, help="objects (default: %(default)s)")
    p.add_argument("--workers", type=int, default=8, help="parallel GETs (default: 8)")
    p.add_argument("--out", default="bench-preload.json")
    args = p.parse_args()
    size = parse_quantity(args.size)
    per_file = size // args.files
    workdir = tempfile.mkdtemp(prefix="eddy-bench-preload-", dir="/dev/shm")
    try:
        with S3Server() as s3:
            bucket = "bench"
            s3.create_bucket(bucket)
            keys = {}
            for i in range(args.files):
                key = f"data/shard-{i:03d}.bin"
                s3.put(bucket, key, os.urandom(per_file))
                keys[key] = per_file
            store = s3._store(bucket)
            raw_before = raw_mb_s(store, keys, args.workers)
            pre = preload_mb_s(s3, bucket, workdir, per_file * args.files, args.workers)
            raw_after = raw_mb_s(store, keys, args.workers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    raw = (raw_before + raw_after) / 2
    figures = {"size_bytes": per_file * args.files, "files": args.files,
               "workers": args.workers, "raw_ranged_get_mb_s": raw,
               "raw_runs_mb_s": [raw_before, raw_after], "preload_mb_s": pre["mb_s"],
               "preload_seconds": pre["seconds"], "preload_over_raw": pre["mb_s"] / raw,
               "target_preload_over_raw_min": TARGET,
               "target_met": pre["mb_s"] / raw >= TARGET}
    print(f"dataset: {figures['size_bytes'] / 2**30:.2f} GiB in {args.files} objects, "
          f"{args.workers} workers")
    print(f"  raw parallel ranged GETs   {raw:8.0f} MB/s  (runs: {raw_before:.0f}, "
          f"{raw_after:.0f})")
    print(f"  eddy preload               {pre['mb_s']:8.0f} MB/s  ({pre['seconds']:.1f} s)")
    print(f"  preload / raw = {figures['preload_over_raw']:.2f}   target >= {TARGET}: "
          f"{'met' if figures['target_met'] else 'NOT met'}")
    with open(args.out, "w") as f:
        json.dump(figures, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
