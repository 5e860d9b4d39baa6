"""Conversions between engine values and proto/cache.proto messages, shared by both ends."""

from __future__ import annotations

from eddy.errors import FailedPrecondition
from eddy.pb import cache_pb2

from .ufs.base import Entry, Kind, UfsUnavailable

KIND_TO_PB = {Kind.FILE: cache_pb2.Entry.FILE, Kind.DIR: cache_pb2.Entry.DIR,
              Kind.SYMLINK: cache_pb2.Entry.SYMLINK}
KIND_FROM_PB = {v: k for k, v in KIND_TO_PB.items()}


class DatasetNotOpen(FailedPrecondition):
    """The engine does not know this dataset id (it restarted): open the dataset again."""


class EngineUnreachable(UfsUnavailable):
    """Nobody answers on the engine socket (the node plugin is down or restarting)."""


def entry_to_pb(entry: Entry) -> cache_pb2.Entry:
    return cache_pb2.Entry(path=entry.path, kind=KIND_TO_PB[entry.kind], size=entry.size,
                           mtime_ns=entry.mtime_ns, version=entry.version,
                           target=entry.target or "")


def entry_from_pb(msg: cache_pb2.Entry) -> Entry:
    return Entry(msg.path, KIND_FROM_PB[msg.kind], msg.size, msg.mtime_ns, msg.version,
                 msg.target or None)
