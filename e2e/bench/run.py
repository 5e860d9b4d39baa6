"""`make bench`: eddy beside the physical references and its peers, one run, one machine.

    python -m e2e.bench [--size 2Gi] [--small-files 10000] [--quick] [--no-peers]
                        [--disk-dir /var/tmp]

Makes the data on tmpfs, starts one SeaweedFS S3 server (loopback, free ports, its volumes on
the same tmpfs), uploads, then runs the scenarios of `scenarios` for the big file and the small
files, `model`'s (a loader mapping the big file, which is a safetensors file) and `disk`'s (the
big file on an SSD tier in --disk-dir, beside a direct read of a copy there; skipped with the
reason when that is no disk or has no room); prints a table and writes
--out-dir/bench-results.json and bench-results.png. Every mount, process and temp dir is
removed at the end, on failure and on Ctrl-C or SIGTERM too.
Needs root (FUSE, drop_caches). Exit status: 0 when every eddy row not skipped (the disk rows
can be) was measured and read the source's bytes, 1 otherwise; a missed target is reported,
not an error.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from cache_engine.quantity import parse_quantity
from eddy import __version__
from eddy.base.mounttable import filesystem_of

from . import disk, model, report, scenarios
from .mounts import Eddy, Rclone, S3fs, System, installed, sweep
from .results import Results
from .source import Source

BUDGET_SECONDS = 15 * 60  # the whole bench on a 2-core machine
FULL = {"size": "2Gi", "small_files": 10000}  # the datasets the targets are set for
QUICK = {"size": "64Mi", "small_files": 500}


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: unwind like Ctrl-C so every finally block cleans up."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m e2e.bench", description=__doc__.split("\n")[0])
    p.add_argument("--size", help="the big file's size (default 2Gi; --quick: 64Mi)")
    p.add_argument("--small-files", type=int,
                   help="how many small files of 4-64 KiB (default 10000; --quick: 500)")
    p.add_argument("--quick", action="store_true", help="a smoke test: small sizes")
    p.add_argument("--no-peers", action="store_true", help="skip rclone and s3fs")
    p.add_argument("--out-dir", default="bench-results",
                   help="where bench-results.json and .png go (default: %(default)s)")
    p.add_argument("--workdir", default="/dev/shm",
                   help="a tmpfs for the data, the S3 server and the caches "
                        "(default: %(default)s)")
    p.add_argument("--disk-dir", default="/var/tmp",
                   help="a directory on a real disk for the disk rows: a copy of the big file "
                        "and eddy's SSD tier (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    defaults = QUICK if args.quick else FULL
    size = parse_quantity(args.size or defaults["size"])
    small_files = args.small_files or defaults["small_files"]
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("the bench needs root and /dev/fuse (FUSE mounts, drop_caches)", file=sys.stderr)
        return 2
    need = 4 * size + 6 * small_files * (64 << 10)  # source, S3 copy, one cache, headroom
    free = shutil.disk_usage(args.workdir).free
    if free < need:
        print(f"{args.workdir} has {free >> 20} MiB free; the bench needs {need >> 20} MiB",
              file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    started = time.monotonic()
    results = Results()
    peers = _peers(args.no_peers, results)
    workdir = tempfile.mkdtemp(prefix="eddy-bench-", dir=args.workdir)
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in stops}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    source = None
    try:
        print(f"making {size / 2**30:.2f} GiB + {small_files} small files, starting S3 ...",
              flush=True)
        source = Source(workdir, size, small_files)
        meta = _meta(args, argv, source, peers)
        print(f"ready after {time.monotonic() - started:.0f} s", flush=True)
        _run_scenarios(source, peers, results, workdir, args.disk_dir, meta)
        meta["elapsed_seconds"] = round(time.monotonic() - started, 1)
        meta["within_budget"] = meta["elapsed_seconds"] <= BUDGET_SECONDS
    finally:
        for sig in stops:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        _clean_up(workdir, source)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _report(results, meta, args.out_dir)
    failed = results.eddy_failed()
    for row in failed:
        print(f"eddy row {row.id} not measured: {row.error or row.skipped}", file=sys.stderr)
    return 1 if failed else 0


def _run_scenarios(source: Source, peers: list[type[System]], results: Results, workdir: str,
                   disk_dir: str, meta: dict) -> None:
    cache_root = os.path.join(workdir, "cache")
    for ds in scenarios.datasets(source):
        print(meta["datasets"][ds.key]["title"], flush=True)
        scenarios.references(ds, results)
        systems = [Eddy(source, workdir), *(peer(source, workdir) for peer in peers)]
        if ds.key == "big":  # the targets compare cold reads of it: see `warm_up`
            for system in systems:
                scenarios.warm_up(system, ds, results, cache_root)
        scenarios.run_system(systems[0], ds, results, cache_root)
        scenarios.finish_references(ds, results)
        for peer in systems[1:]:
            scenarios.run_system(peer, ds, results, cache_root)
        if ds.key == "big":  # the targets compare cold reads of it: alternate the order
            for system in reversed(systems):
                scenarios.cold_again(system, ds, results, cache_root)
    print(meta["datasets"]["model"]["title"], flush=True)
    model.run(source, peers, results, workdir, cache_root)
    print(meta["datasets"]["disk"]["title"], flush=True)
    disk.run(source, results, workdir, disk_dir)


def _report(results: Results, meta: dict, out_dir: str) -> None:
    json_path = os.path.join(out_dir, "bench-results.json")
    chart_path = os.path.join(out_dir, "bench-results.png")
    print()
    print(report.table(results, meta))
    print(f"\nfinished in {meta['elapsed_seconds']:.0f} s (budget {BUDGET_SECONDS} s: "
          f"{'within' if meta['within_budget'] else 'OVER'})")
    report.write_json(results, meta, json_path)
    report.write_chart(results, meta, chart_path)
    print(f"wrote {json_path} and {chart_path}")


def _interrupt(signum, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _peers(skip: bool, results: Results) -> list[type[System]]:
    """The peers to run, installed if missing; the others' rows are marked skipped."""
    usable = []
    for cls in (Rclone, S3fs):
        why = "--no-peers" if skip else installed(cls.name)
        if not why:
            usable.append(cls)
            continue
        print(f"skipping {cls.name}: {why}", flush=True)
        for row in results.rows.values():
            if row.system == cls.name:
                row.skipped = why
    return usable


def _clean_up(workdir: str, source: Source | None) -> None:
    left = sweep(workdir)
    if left:
        print(f"cleanup: unmounted {', '.join(left)}", file=sys.stderr)
    if source is not None:
        source.close()
    shutil.rmtree(workdir, ignore_errors=True)


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def _meta(args, argv: list[str], source: Source, peers: list[type[System]]) -> dict:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / 2**20
    os_name = platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    cores = os.cpu_count()
    return {
        "command": "python -m e2e.bench " + shlex.join(argv),
        "machine": {"summary": f"{cores} cores, {mem_gib:.0f} GiB RAM, {os_name}, "
                               f"Linux {platform.release()}",
                    "cores": cores, "cpu": cpu, "memory_gib": round(mem_gib, 1), "os": os_name,
                    "kernel": platform.release()},
        "versions": {"eddy": __version__, "python": platform.python_version(),
                     "seaweedfs": _version([source.s3.weed, "version"]),
                     **{peer.name: _version([peer.name, "--version"]) for peer in peers}},
        "datasets": {
            "big": {"title": f"{source.big_bytes / 2**30:.2f} GiB file",
                    "bytes": source.big_bytes, "files": 1},
            "small": {"title": f"{source.small_files} small files (4-64 KiB, "
                               f"{source.small_bytes / 2**20:.0f} MiB)",
                      "bytes": source.small_bytes, "files": source.small_files},
            "model": {"title": f"{source.big_bytes / 2**30:.2f} GiB model.safetensors "
                               f"({source.tensors} tensors), cold: mmap loader copying its "
                               "tensors in shuffled order, and a sequential read",
                      "bytes": source.big_bytes, "files": 1, "tensors": source.tensors},
            "disk": {"title": f"{source.big_bytes / 2**30:.2f} GiB file on a disk "
                              f"({filesystem_of(args.disk_dir) or '?'} at {args.disk_dir}), page "
                              "cache dropped: read directly, and through eddy with one SSD "
                              "tier there",
                     "bytes": source.big_bytes, "files": 1},
        },
        "setup": {"workdir_fs": "tmpfs" if args.workdir.startswith("/dev/shm") else args.workdir,
                  "caches": "every system's cache dir on the same tmpfs (eddy: one MEM tier); "
                            "the disk rows: eddy's one SSD tier in --disk-dir",
                  "disk_dir": args.disk_dir,
                  "s3": "SeaweedFS on 127.0.0.1, volumes on the same tmpfs",
                  "reader": "1 MiB read() calls; small files: find | xargs cat"},
    }
