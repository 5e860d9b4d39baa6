"""`eddy preload` and `eddy status`: talk to a node plugin's or a mount's cache engine.

A node plugin answers on the endpoint it serves CSI on (`--endpoint`, the value given to
`eddy serve`); a standalone `eddy mount` answers on a socket named after its mountpoint
(`--mountpoint`), which `mount_socket` derives the same way the mount does.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import grpc

from eddy.base.errors import EddyError
from eddy.base.pb import cache_pb2, cache_pb2_grpc
from eddy.base.rpc import ERROR_KEY

MOUNT_SOCKET_DIR = "/run/eddy"
POLL_SECONDS = 0.5
CALL_TIMEOUT = 30.0
DONE_OK = "Complete"


def mount_volume_id(mountpoint: str) -> str:
    """The volume id `eddy mount` gives the mount at `mountpoint`."""
    path = os.path.abspath(mountpoint)
    return "mount-" + hashlib.sha256(path.encode()).hexdigest()[:12]


def mount_socket(mountpoint: str) -> str:
    return os.path.join(MOUNT_SOCKET_DIR, f"{mount_volume_id(mountpoint)}.sock")


def _stub(args) -> cache_pb2_grpc.CacheEngineStub:
    if args.mountpoint:
        path = mount_socket(args.mountpoint)
        if not os.path.exists(path):
            raise EddyError(f"{os.path.abspath(args.mountpoint)} is not served by `eddy mount` "
                            f"on this machine (no {path})")
        target = f"unix://{path}"
    else:
        target = args.endpoint if args.endpoint.startswith("unix:") else f"unix://{args.endpoint}"
    return cache_pb2_grpc.CacheEngineStub(grpc.insecure_channel(target))


def _call(method, request, where: str):
    try:
        return method(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE and ERROR_KEY not in dict(
                e.trailing_metadata() or ()):
            raise EddyError(f"nothing answers at {where}: {e.details()}") from None
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise EddyError(f"{where} has no cache engine (a controller-only plugin?)") from None
        raise EddyError(e.details() or e.code().name) from None


def _where(args) -> str:
    return args.mountpoint or args.endpoint


# --- preload ----------------------------------------------------------------------------------

def preload(args) -> int:
    stub, where = _stub(args), _where(args)
    target = cache_pb2.PreloadTarget(volume_id=args.volume_id or "")
    if args.cancel:
        job = _call(stub.CancelPreload, target, where)
        _print_job(job, args.json)
        return 0
    job = _call(stub.Preload, cache_pb2.PreloadRequest(target=target, paths=args.paths,
                                                       workers=args.workers), where)
    if not args.wait:
        _print_job(job, args.json)
        return 0
    if args.json or not sys.stdout.isatty():
        job = _follow_json(stub, target, where)
    else:
        job = _follow_bar(stub, target, where, job)
    if job.state != DONE_OK:
        print(f"eddy preload: {job.state}: {job.message or 'not complete'} "
              f"({_size(job.bytes_cached)} of {_size(job.bytes_total)} cached)", file=sys.stderr)
        return 1
    return 0


def _job_dict(job: cache_pb2.PreloadJob) -> dict:
    """The job as JSON with numbers as numbers (protobuf's JSON writes 64-bit ints as text)."""
    out = {f.name: getattr(job, f.name) for f in job.DESCRIPTOR.fields}
    out["paths"] = list(job.paths)
    out["finished"] = job.finished or None
    return out


def _print_job(job: cache_pb2.PreloadJob, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_job_dict(job)), flush=True)
    else:
        print(f"preload of dataset {job.dataset_id}: {job.state}, {job.files_done}/"
              f"{job.files_total} files, {_size(job.bytes_cached)} of "
              f"{_size(job.bytes_total)} cached" + (f" ({job.message})" if job.message else ""))


def _follow_json(stub, target, where: str) -> cache_pb2.PreloadJob:
    while True:
        job = _call(stub.GetPreload, target, where)
        print(json.dumps(_job_dict(job)), flush=True)
        if job.state != "Running":
            return job
        time.sleep(1.0)


def _follow_bar(stub, target, where: str, job) -> cache_pb2.PreloadJob:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("[bold]preload"), BarColumn(), DownloadColumn(binary_units=True),
               TextColumn("{task.fields[files]}"), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("preload", total=None, files="")
        while True:
            bar.update(task, completed=job.bytes_cached,
                       total=None if job.listing else job.bytes_total,
                       files=f"{job.files_done}/{job.files_total}{'+' if job.listing else ''}"
                             " files")
            if job.state != "Running":
                return job
            time.sleep(POLL_SECONDS)
            job = _call(stub.GetPreload, target, where)


# --- status -----------------------------------------------------------------------------------

def status(args) -> int:
    stub, where = _stub(args), _where(args)
    resp = _call(stub.Status, cache_pb2.StatusRequest(wait=args.wait), where)
    if args.json:
        mounts = {m.volume_id: m for m in resp.mounts}
        print(json.dumps([{**_row(d, resp), "mounts": [
            {"volume_id": v, "abnormal": mounts[v].abnormal, "message": mounts[v].message}
            for v in d.volumes if v in mounts]} for d in resp.datasets], indent=2))
        return 0
    _print_table(resp, args.wide)
    return 0


def _row(d: cache_pb2.DatasetStatus, resp) -> dict:
    """One dataset as JSON: raw byte counts, None where not known yet."""
    percent = None
    if d.size_known:
        percent = 100.0 if d.ufs_total_bytes == 0 else \
            round(100.0 * d.cached_bytes / d.ufs_total_bytes, 2)
    lookups = d.hits + d.misses
    return {
        "name": ",".join(d.volumes) or d.dataset_id, "dataset_id": d.dataset_id,
        "source": d.source, "volumes": list(d.volumes),
        "ufs_total_bytes": d.ufs_total_bytes if d.size_known else None,
        "ufs_files": d.ufs_files if d.size_known else None,
        "cached_bytes": d.cached_bytes,
        "cache_capacity_bytes": d.capacity if d.capacity_known else None,
        "cached_percentage": percent, "phase": d.phase,
        "hits": d.hits, "misses": d.misses,
        "hit_ratio": round(d.hits / lookups, 4) if lookups else None,
        "tier_bytes": dict(d.tier_bytes),
        "preload": _job_dict(d.preload) if d.HasField("preload") else None,
        "message": d.message,
    }


def _print_table(resp, wide: bool) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    tiers = list(resp.tiers) or sorted(resp.tier_size)  # an engine before `tiers` had no order
    table = Table(box=None, header_style="bold", pad_edge=False)
    headers = ["NAME", "UFS TOTAL SIZE", "CACHED", "CACHE CAPACITY", "CACHED PERCENTAGE",
               "PHASE", "HIT RATIO"]
    if wide:
        headers += [f"{t} BYTES" for t in tiers] + ["SOURCE", "DATASET"]
    for h in headers:
        table.add_column(h, no_wrap=True)
    for d in resp.datasets:
        row = _row(d, resp)
        cells = [
            row["name"],
            _size(row["ufs_total_bytes"]) if row["ufs_total_bytes"] is not None
            else "calculating",
            _size(row["cached_bytes"]),
            _size(row["cache_capacity_bytes"]) if row["cache_capacity_bytes"] is not None
            else "-",
            f"{row['cached_percentage']:.1f}%" if row["cached_percentage"] is not None else "-",
            row["phase"],
            f"{100 * row['hit_ratio']:.1f}%" if row["hit_ratio"] is not None else "-",
        ]
        if wide:
            cells += [_size(row["tier_bytes"].get(t, 0)) for t in tiers]
            cells += [row["source"] or "-", row["dataset_id"]]
        table.add_row(*cells)
    console = Console(width=None if sys.stdout.isatty() else 400)  # never cut a pipe's rows
    if not resp.datasets:
        console.print("no datasets on this node yet")
        return
    console.print(table)
    usage = ", ".join(f"{t} {_size(resp.tier_used[t])}/{_size(resp.tier_size[t])}"
                      + (f" (+{_size(resp.tier_held[t])} held)" if resp.tier_held.get(t) else "")
                      for t in tiers)
    console.print(f"[dim]tiers: {usage}[/dim]")
    sick = [m for m in resp.mounts if m.abnormal]
    if resp.mounts:
        console.print(f"[dim]mounts: {len(resp.mounts) - len(sick)} of {len(resp.mounts)} "
                      "served[/dim]")
    for m in sick:
        console.print(Text(f"volume {m.volume_id}: {m.message}", style="yellow"))


def _size(n: int | None) -> str:
    """Bytes the way `kubectl get dataset` shows them: 3.30GiB, 512.00MiB, 12B."""
    if n is None:
        return "-"
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n}B"
