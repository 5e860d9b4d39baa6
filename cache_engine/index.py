"""The crash-safe block index: one SQLite row per cached block, in `<state_dir>/index.db`.

Each change (insert, delete, move to another tier) is one transaction, made after the block
file is in place and before an old file is unlinked, so a kill -9 at any instant leaves at
worst a file without a row, which `recovery.reconcile` deletes. The engine never reads SQLite
on the read path: it loads all rows once at start into its in-memory mirror
(`table.BlockTable`) and only writes here afterwards. LRU access counters are written in
batches (`update_access`); losing the last batch in a crash costs LRU precision, never
consistency.

A write that SQLite refuses (disk full, database locked, I/O error) raises `IndexWriteFailed`,
counted in `failures` and logged once per outage: callers serve the block uncached, or go on
with a row left behind that points at a file they remove (the next start drops such rows), so
a failing state disk never fails a read. An index.db that is not a database or fails its
integrity check is moved aside (`index.db.corrupt-<time>`) and the engine starts empty;
recovery then removes the tier files no row names (their names hash the key: no row can be
rebuilt from them). An index that cannot even be opened for writing (the state disk is full,
read-only or failing when the engine starts) is copied into memory and kept there until the
engine restarts (`in_memory`): blocks cached meanwhile have no row on disk, so the next start
frees them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from urllib.parse import quote

from eddy.base import log

from .blocks import Block, BlockKey

SCHEMA_VERSION = 2  # 2: blocks.offset (extents)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    dataset_id  TEXT NOT NULL,
    path        TEXT NOT NULL,
    version     TEXT NOT NULL,
    block       INTEGER NOT NULL,
    tier        TEXT NOT NULL,
    file        TEXT NOT NULL,
    length      INTEGER NOT NULL,
    checksum    INTEGER NOT NULL,  -- xxh3_64 stored as a signed 64-bit integer
    last_access INTEGER NOT NULL,  -- the engine's access counter, see blocks.Block.seq
    "offset"    INTEGER NOT NULL DEFAULT 0,  -- where the bytes start in file (an extent)
    PRIMARY KEY (dataset_id, path, version, block)
) WITHOUT ROWID;
"""
_KEY = "dataset_id = ? AND path = ? AND version = ? AND block = ?"
_CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_log = log.get("cache_engine.index")


class IndexWriteFailed(Exception):
    """SQLite refused a write (disk full, locked, I/O error): the index did not change."""


class _FailedCheck(sqlite3.DatabaseError):
    """The index opened, but `PRAGMA integrity_check` found damage."""

    sqlite_errorcode = sqlite3.SQLITE_CORRUPT


def _corrupt(error: sqlite3.DatabaseError) -> bool:
    """Whether the file is damaged (not a database, malformed), not merely unwritable."""
    return (not isinstance(error, sqlite3.OperationalError)
            and getattr(error, "sqlite_errorcode", None) in _CORRUPT)


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def _unsigned(s: int) -> int:
    return s + (1 << 64) if s < 0 else s


class BlockIndex:
    """SQLite persistence of the block table; thread-safe (one connection behind a lock).

    `failures` counts the writes SQLite refused; a corrupt index is moved aside at start (its
    new name is logged)."""

    def __init__(self, path: str):
        self.failures = 0
        self.in_memory = False  # the state disk refused the index at start
        self._failing = False
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self._open(path)
        except (sqlite3.DatabaseError, OSError) as e:
            if isinstance(e, sqlite3.DatabaseError) and _corrupt(e):
                self._db.close()
                _log.warning("index.corrupt", path=path, moved_to=_move_aside(path),
                             error=str(e))
                self._open(path)
            else:
                if self._db is not None:
                    self._db.close()
                self._open_in_memory(path, e)

    def _open(self, path: str) -> None:
        if not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        os.chmod(path, 0o600)  # SQLite gives -wal and -shm the same mode
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        with self._lock:
            problems = [row[0] for row in self._db.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise _FailedCheck("; ".join(map(str, problems[:3])))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._prepare()

    def _open_in_memory(self, path: str, error: Exception) -> None:
        """Keep the index in memory, starting from what the disk's copy holds if it can be
        read (without writing: `immutable`); the engine caches on, the next start frees
        what it cached meanwhile."""
        self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.in_memory = True
        copied = False
        with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(
                f"file:{quote(os.path.abspath(path))}?mode=ro&immutable=1", uri=True)) as disk:
            if [row[0] for row in disk.execute("PRAGMA integrity_check")] == ["ok"]:
                disk.backup(self._db)
                copied = True
        with self._lock:
            self._prepare()
        _log.warning("index.in_memory", path=path, error=str(error), rows_kept=copied,
                     consequence="blocks cached until the engine restarts are freed then")

    def _prepare(self) -> None:
        """Create or upgrade the schema (under the lock)."""
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(blocks)")}
        if "offset" not in columns:  # an index from before extents: every row at 0
            self._db.execute('ALTER TABLE blocks ADD COLUMN "offset" INTEGER NOT NULL'
                             ' DEFAULT 0')
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)",
                         (str(SCHEMA_VERSION),))

    def load(self) -> list[Block]:
        with self._lock:
            rows = self._db.execute(
                "SELECT dataset_id, path, version, block, tier, file, length, checksum,"
                ' last_access, "offset" FROM blocks').fetchall()
        return [Block(BlockKey(d, p, v, i), tier, file, length, _unsigned(ck), seq,
                      offset=offset)
                for d, p, v, i, tier, file, length, ck, seq, offset in rows]

    @contextlib.contextmanager
    def _writing(self, what: str):
        """Hold the lock for one write; a refused write becomes `IndexWriteFailed`."""
        with self._lock:
            try:
                yield
            except sqlite3.ProgrammingError:
                raise  # a bug (or a closed index), not the disk
            except sqlite3.DatabaseError as e:
                self.failures += 1
                if not self._failing:
                    self._failing = True
                    _log.warning("index.write_failed", write=what, error=str(e),
                                 fallback="blocks are served uncached")
                raise IndexWriteFailed(str(e)) from e
            if self._failing:
                self._failing = False
                _log.info("index.writes_again", write=what)

    def insert(self, block: Block) -> None:
        k = block.key
        with self._writing("insert"):
            self._db.execute(
                "INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (k.dataset_id, k.path, k.version, k.index, block.tier, block.file,
                 block.length, _signed(block.checksum), block.seq, block.offset))

    def delete(self, key: BlockKey) -> None:
        with self._writing("delete"):
            self._db.execute(f"DELETE FROM blocks WHERE {_KEY}", tuple(key))

    def delete_many(self, keys: Iterable[BlockKey]) -> None:
        with self._writing("delete"):
            self._transaction(f"DELETE FROM blocks WHERE {_KEY}", [tuple(k) for k in keys])

    def _transaction(self, sql: str, params: list[tuple]) -> None:
        """Under the lock: `sql` for every parameter tuple, in one transaction."""
        self._db.execute("BEGIN")
        try:
            self._db.executemany(sql, params)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def move(self, key: BlockKey, tier: str, file: str, offset: int = 0) -> None:
        with self._writing("move"):
            self._db.execute(f'UPDATE blocks SET tier = ?, file = ?, "offset" = ? WHERE {_KEY}',
                             (tier, file, offset, *key))

    def update_access(self, seqs: Iterable[tuple[BlockKey, int]]) -> None:
        """Write a batch of LRU access counters; rows deleted meanwhile are skipped."""
        params = [(seq, *key) for key, seq in seqs]
        if not params:
            return
        with self._writing("access"):
            self._transaction(f"UPDATE blocks SET last_access = ? WHERE {_KEY}", params)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _move_aside(path: str) -> str:
    """Rename a corrupt index (and its -wal, -shm) to `<path>.corrupt-<time>`; the new name."""
    aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
    for suffix in ("-wal", "-shm", ""):
        with contextlib.suppress(FileNotFoundError):
            os.rename(path + suffix, aside + suffix)
    return aside
