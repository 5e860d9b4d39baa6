"""Helpers for the cache engine tests: small tiers, specs, a fake clock, a verifying reader."""

from __future__ import annotations

import dataclasses
import os

import xxhash

from cache_engine.spec import parse_parameters
from cache_engine.tiers import Tier

BS = 64 << 10  # the smallest block size a volume may ask for


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def blob(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def make_spec(source: str = "local:///data", capacity: int | None = None, **params: str):
    """A DatasetSpec with 64 KiB blocks; `capacity` may be below the parameter minimum."""
    params = {"source": source, "blockSize": "64Ki", "readAhead": "0", **params}
    spec = parse_parameters(params)
    if capacity is not None:
        spec = dataclasses.replace(spec, cache_capacity=capacity)
    return spec


def make_tiers(root: str, *sizes_in_blocks: int, high: float = 0.95,
               low: float = 0.85) -> list[Tier]:
    names = ["MEM", "SSD", "HDD"]
    return [Tier(names[i], os.path.join(root, names[i].lower()), n * BS, high, low)
            for i, n in enumerate(sizes_in_blocks)]


def read_location(engine, dataset_id: str, path: str, version: str, index: int,
                  size: int) -> bytes:
    """Read one block the way a mount daemon does: pread, verify, report and retry."""
    for _ in range(5):
        loc = engine.locate(dataset_id, path, version, index, size)
        if loc.data is not None:
            return loc.data
        try:
            with open(loc.file, "rb") as f:
                data = os.pread(f.fileno(), loc.length, loc.offset)
        except FileNotFoundError:
            continue  # moved or evicted between locate and open
        if len(data) == loc.length and xxhash.xxh3_64_intdigest(data) == loc.checksum:
            return data
        engine.report_corrupt(dataset_id, path, version, index)
    raise AssertionError(f"block {index} of {path} could not be read")


def read_all(engine, ds, ufs, path):
    entry = engine.stat(ds, path)
    n = -(-entry.size // BS)
    return b"".join(read_location(engine, ds, path, entry.version, i, entry.size)
                    for i in range(n))
