"""Values the engine hands to its callers, in a module that imports nothing heavy.

A mount daemon talks to the node's engine through `client.EngineClient` and reads through
`reader.DatasetReader`; both need these values but none of the engine's machinery (the
SQLite index, the block table, placement, preload). Keeping them here lets a daemon import
the client without loading the engine.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from eddy.base.errors import FailedPrecondition

if TYPE_CHECKING:
    from .blocks import BlockKey


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """What opening a dataset tells its reader: its id and the settings that shape reads."""

    dataset_id: str
    block_size: int
    metadata_ttl: float | None
    read_ahead: int


@dataclass(frozen=True, slots=True)
class Location:
    """Where a block's bytes are: its tier file (pread `length` bytes at `offset`) and/or `data`.

    `data` is set when no tier took the block, and also when this very call fetched it from the
    source: a caller in the engine's process then needs no pread and no second checksum.
    """

    file: str | None = None
    offset: int = 0
    length: int = 0
    checksum: int = 0
    data: bytes | None = None
    following: tuple[Location, ...] = ()  # cached blocks right after it, when asked for
    next_files: tuple[tuple[str, str, Location], ...] = ()  # (path, version, block 0)


@dataclass(frozen=True, slots=True)
class CachedBlock:
    """A read-only view of one cached block, for status and tests."""

    key: BlockKey
    tier: str
    file: str
    length: int
    checksum: int
    offset: int = 0  # in `file`: an extent holds many blocks


class StateDirBusy(FailedPrecondition):
    """Another engine holds this state directory's lock."""


class JobState(enum.Enum):
    """How a preload job stands (see the module docstring); shown by `eddy preload` and status."""

    RUNNING = "Running"
    COMPLETE = "Complete"
    CAPACITY_REACHED = "CapacityReached"
    CANCELLED = "Cancelled"
    FAILED = "Failed"


@dataclass(frozen=True)
class PreloadProgress:
    """A snapshot of one job, safe to hand out."""

    dataset_id: str
    paths: tuple[str, ...]
    state: JobState
    listing: bool  # still walking the scope: the totals are not final yet
    files_total: int
    files_done: int
    bytes_total: int
    bytes_cached: int  # bytes of the scope in the cache (skipped + loaded)
    bytes_fetched: int  # bytes this job read from the source
    blocks_skipped: int
    started: float
    finished: float | None
    message: str = ""

    @property
    def done(self) -> bool:
        return self.state is not JobState.RUNNING
