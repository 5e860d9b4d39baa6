"""The controller's volume records: what CreateVolume promised, keyed by volume id and by name.

CreateVolume is idempotent by name, so the controller must remember every volume it created
across restarts. `VolumeStore` is the small interface the controller uses; `SqliteVolumeStore`
keeps the records in one SQLite file under `--state-dir` (one transaction per write, so a crash
leaves either the whole record or none). A Kubernetes-API store for multi-replica controllers
implements the same interface.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from eddy.base.errors import AlreadyExists

DB_NAME = "controller.db"


@dataclass(frozen=True)
class VolumeRecord:
    """One created volume. `parameters` are the canonical dataset parameters (volume_context)."""

    volume_id: str
    name: str
    parameters: dict[str, str] = field(hash=False)
    capacity_bytes: int
    created_at: float


class VolumeStore(ABC):
    """Volume records by id and by unique name. Every method is safe to call from any thread."""

    @abstractmethod
    def get(self, volume_id: str) -> VolumeRecord | None:
        """The record with this id, or None."""

    @abstractmethod
    def get_by_name(self, name: str) -> VolumeRecord | None:
        """The record with this CreateVolume name, or None."""

    @abstractmethod
    def create(self, record: VolumeRecord) -> None:
        """Store `record` atomically; AlreadyExists if its name (or id) is already taken."""

    @abstractmethod
    def delete(self, volume_id: str) -> bool:
        """Remove the record; False if there was none."""

    @abstractmethod
    def list(self, after: str | None, limit: int) -> list[VolumeRecord]:
        """Up to `limit` records (all if 0) with volume_id > `after`, ordered by volume_id."""


class SqliteVolumeStore(VolumeStore):
    """Records in one SQLite file (WAL mode, mode 0600); one connection guarded by a lock.

    The connection is in autocommit mode and every write is a single statement, so each write
    is exactly one transaction.
    """

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS volumes (
            volume_id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            parameters TEXT NOT NULL,
            capacity_bytes INTEGER NOT NULL,
            created_at REAL NOT NULL
        )"""
    _COLUMNS = "volume_id, name, parameters, capacity_bytes, created_at"

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Create the file 0600 before SQLite does; its -wal and -shm files copy this mode.
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(path, 0o600)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(self._SCHEMA)

    @classmethod
    def in_state_dir(cls, state_dir: str | os.PathLike) -> SqliteVolumeStore:
        """The store at `<state_dir>/controller.db`."""
        return cls(Path(state_dir) / DB_NAME)

    def get(self, volume_id: str) -> VolumeRecord | None:
        return self._one("volume_id", volume_id)

    def get_by_name(self, name: str) -> VolumeRecord | None:
        return self._one("name", name)

    def create(self, record: VolumeRecord) -> None:
        row = (record.volume_id, record.name, json.dumps(record.parameters, sort_keys=True),
               record.capacity_bytes, record.created_at)
        try:
            with self._lock:
                self._db.execute(f"INSERT INTO volumes ({self._COLUMNS}) VALUES (?,?,?,?,?)", row)
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"volume {record.name!r} already exists") from None

    def delete(self, volume_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM volumes WHERE volume_id = ?", (volume_id,))
        return cursor.rowcount > 0

    def list(self, after: str | None, limit: int) -> list[VolumeRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM volumes WHERE volume_id > ? "
                "ORDER BY volume_id LIMIT ?",
                (after or "", limit if limit > 0 else -1),
            ).fetchall()
        return [self._record(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, column: str, value: str) -> VolumeRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._COLUMNS} FROM volumes WHERE {column} = ?", (value,)
            ).fetchone()
        return self._record(row) if row else None

    @staticmethod
    def _record(row: tuple) -> VolumeRecord:
        volume_id, name, parameters, capacity_bytes, created_at = row
        return VolumeRecord(volume_id, name, json.loads(parameters), capacity_bytes, created_at)
