"""Conversions between engine values and proto/cache.proto messages, shared by both ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eddy.base.errors import FailedPrecondition
from eddy.base.pb import cache_pb2

from .types import Location
from .ufs.base import Entry, Kind, UfsUnavailable

if TYPE_CHECKING:  # the client side never converts these: it need not load the engine's parts
    from .status import DatasetStatus
    from .types import PreloadProgress

KIND_TO_PB = {Kind.FILE: cache_pb2.Entry.FILE, Kind.DIR: cache_pb2.Entry.DIR,
              Kind.SYMLINK: cache_pb2.Entry.SYMLINK}
KIND_FROM_PB = {v: k for k, v in KIND_TO_PB.items()}


class DatasetNotOpen(FailedPrecondition):
    """The engine does not know this dataset id (it restarted): open the dataset again."""


class EngineUnreachable(UfsUnavailable):
    """Nobody answers on the engine socket (the node plugin is down or restarting)."""


_OWNER = ("mode", "uid", "gid")


def entry_to_pb(entry: Entry) -> cache_pb2.Entry:
    owner = {f: getattr(entry, f) for f in _OWNER if getattr(entry, f) is not None}
    return cache_pb2.Entry(path=entry.path, kind=KIND_TO_PB[entry.kind], size=entry.size,
                           mtime_ns=entry.mtime_ns, version=entry.version,
                           target=entry.target or "", **owner)


def entry_from_pb(msg: cache_pb2.Entry) -> Entry:
    """An absent mode, uid or gid (an object store, an older engine) stays None, not 0."""
    owner = {f: getattr(msg, f) if msg.HasField(f) else None for f in _OWNER}
    return Entry(msg.path, KIND_FROM_PB[msg.kind], msg.size, msg.mtime_ns, msg.version,
                 msg.target or None, **owner)


def progress_to_pb(p: PreloadProgress) -> cache_pb2.PreloadJob:
    return cache_pb2.PreloadJob(
        dataset_id=p.dataset_id, paths=list(p.paths), state=p.state.value, listing=p.listing,
        files_total=p.files_total, files_done=p.files_done, bytes_total=p.bytes_total,
        bytes_cached=p.bytes_cached, bytes_fetched=p.bytes_fetched,
        blocks_skipped=p.blocks_skipped, started=p.started, finished=p.finished or 0.0,
        message=p.message)


def status_to_pb(s: DatasetStatus) -> cache_pb2.DatasetStatus:
    msg = cache_pb2.DatasetStatus(
        dataset_id=s.dataset_id, source=s.source, volumes=list(s.volumes),
        size_known=s.ufs_total_bytes is not None, ufs_total_bytes=s.ufs_total_bytes or 0,
        ufs_files=s.ufs_files or 0, cached_bytes=s.cached_bytes,
        capacity_known=s.capacity is not None, capacity=s.capacity or 0, phase=s.phase.value,
        hits=s.hits, misses=s.misses, tier_bytes=s.tier_bytes, message=s.message)
    if s.preload is not None:
        msg.preload.CopyFrom(progress_to_pb(s.preload))
    return msg


def location_to_pb(loc: Location) -> cache_pb2.BlockFile:
    return cache_pb2.BlockFile(path=loc.file, offset=loc.offset, length=loc.length,
                               checksum=loc.checksum)


def location_from_pb(f: cache_pb2.BlockFile) -> Location:
    return Location(file=f.path, offset=f.offset, length=f.length, checksum=f.checksum)
