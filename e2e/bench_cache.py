"""Benchmark: how fast a cached dataset reads through an `eddy mount`, against its targets.

On one file of --size bytes kept on tmpfs, in one run, it reports MB/s for

  a  direct   reading the file from tmpfs, no FUSE (the ceiling)
  b  cold     first read through a fresh mount: every block comes from the (local) source
  c  warm     a fresh mount after unmounting and dropping the kernel page cache: every block
              comes from the MEM tier
  d  hot      the same file again through the same mount (kernel page cache kept)

and the mount daemon's peak RSS. It prints a table and writes the figures to --out (JSON).
Run as root (FUSE, drop_caches): `python -m e2e.bench_cache --size 2Gi`; `make bench` runs
the side-by-side benchmark (e2e/bench/), whose timing helpers this script shares.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from cache_engine.quantity import parse_quantity
from e2e.bench.measure import drop_caches, peak_rss_mib, read_file, same_bytes
from e2e.bench.source import make_big_file

TARGETS = {  # figures a 2-core machine must reach
    "warm_mb_s_min": 1000.0, "warm_over_direct_min": 0.25, "hot_over_direct_min": 0.8,
    "daemon_peak_rss_mib_max": 200.0,
}


class Mount:
    def __init__(self, source: str, mountpoint: str, state_dir: str, tier: str, log_dir: str):
        out = subprocess.run(
            [sys.executable, "-m", "eddy.cli", "mount", source, mountpoint, "--state-dir",
             state_dir, "--tier", tier, "--log-dir", log_dir],
            check=True, capture_output=True, text=True).stdout
        self.mountpoint = mountpoint
        self.pid = json.loads(out)["pid"]

    def unmount(self) -> None:
        subprocess.run([sys.executable, "-m", "eddy.cli", "umount", self.mountpoint],
                       check=True)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{self.pid}") and time.monotonic() < deadline:
            time.sleep(0.05)


def run(size: int, workdir: str) -> dict:
    src = os.path.join(workdir, "src")
    mnt = os.path.join(workdir, "mnt")
    os.makedirs(src)
    os.makedirs(mnt)
    data = os.path.join(src, "model.bin")
    make_big_file(data, size)
    tier = f"MEM:{os.path.join(workdir, 'mem')}:{size + (256 << 20)}"
    args = (f"local://{src}", mnt, os.path.join(workdir, "state"), tier,
            os.path.join(workdir, "logs"))
    through = os.path.join(mnt, "model.bin")
    figures: dict = {"size_bytes": size}
    figures["direct_mb_s"] = max(read_file(data).mb_s for _ in range(2))
    mount = Mount(*args)
    try:
        figures["cold_mb_s"] = read_file(through).mb_s
    finally:
        mount.unmount()
    drop_caches()
    mount = Mount(*args)
    try:
        figures["warm_mb_s"] = read_file(through).mb_s
        figures["hot_mb_s"] = read_file(through).mb_s
        figures["daemon_peak_rss_mib"] = peak_rss_mib(mount.pid)
        figures["bytes_match"] = same_bytes(data, through)
    finally:
        mount.unmount()
    figures["warm_over_direct"] = figures["warm_mb_s"] / figures["direct_mb_s"]
    figures["hot_over_direct"] = figures["hot_mb_s"] / figures["direct_mb_s"]
    figures["targets"] = TARGETS
    figures["targets_met"] = {
        "warm_mb_s": figures["warm_mb_s"] >= TARGETS["warm_mb_s_min"],
        "warm_over_direct": figures["warm_over_direct"] >= TARGETS["warm_over_direct_min"],
        "hot_over_direct": figures["hot_over_direct"] >= TARGETS["hot_over_direct_min"],
        "daemon_peak_rss": figures["daemon_peak_rss_mib"] <= TARGETS["daemon_peak_rss_mib_max"],
    }
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="2Gi", help="file size (default: %(default)s)")
    p.add_argument("--out", default="bench-cache.json", help="JSON output (default: %(default)s)")
    p.add_argument("--workdir", default="/dev/shm", help="a tmpfs to work in")
    args = p.parse_args()
    size = parse_quantity(args.size)
    workdir = tempfile.mkdtemp(prefix="eddy-bench-", dir=args.workdir)
    try:
        figures = run(size, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [("a direct read (tmpfs)", figures["direct_mb_s"]),
            ("b cold read through mount", figures["cold_mb_s"]),
            ("c warm read, fresh mount, MEM tier", figures["warm_mb_s"]),
            ("d hot read, same mount", figures["hot_mb_s"])]
    print(f"file: {size / 2**30:.2f} GiB")
    for name, value in rows:
        print(f"  {name:<38} {value:9.0f} MB/s")
    print(f"  c/a = {figures['warm_over_direct']:.2f}   d/a = {figures['hot_over_direct']:.2f}"
          f"   daemon peak RSS = {figures['daemon_peak_rss_mib']:.0f} MiB"
          f"   bytes match: {figures['bytes_match']}")
    print("  targets met: " + ", ".join(f"{k}={'yes' if v else 'NO'}"
                                        for k, v in figures["targets_met"].items()))
    with open(args.out, "w") as f:
        json.dump(figures, f, indent=2)
    print(f"wrote {args.out}")
    return 0 if figures["bytes_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
