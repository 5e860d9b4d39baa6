"""The journal of one mount's session directory: its FUSE_INIT and its table's changes.

A session directory belongs to one connection (the mounter makes it with the mount and removes
it with the mount):

    init      the connection's FUSE_INIT request, as the kernel sent it (once per connection)
    granted   what the first daemon's answer to it granted that a successor cannot tell from
              the request (JSON; absent: nothing), as {"direct_io_mmap": true}
    journal   one JSON array per line, one change each; rewritten as a snapshot of what is
              live when it has grown well past that, so it stays near the size of the tables

Nothing is fsynced: the journal must survive the death of a process, and a connection never
survives the death of the node. `session.SessionTable` writes and replays it.
"""

from __future__ import annotations

import json
import os

from eddy.base import log


class Journal:
    """A session directory: the INIT request, and changes appended as JSON lines.

    `Journal(None)` keeps nothing: a daemon that mounted by itself (`eddy mount`, tests) has
    no successor.
    """

    def __init__(self, directory: str | None):
        self.directory = directory
        self.records = 0  # appended since the journal was last written whole
        self._pending: list[str] = []
        self._fd = -1
        self._failed = False
        if directory is not None:
            self._fd = self._open(os.path.join(directory, "journal"), os.O_APPEND)

    @staticmethod
    def _open(path: str, flags: int) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | flags, 0o600)

    def save_init(self, request: bytes, granted: dict[str, bool] | None = None) -> None:
        """Keep the connection's INIT request and what the answer grants (written once,
        before it is answered)."""
        if self.directory is not None:
            self._write_whole(os.path.join(self.directory, "granted"),
                              json.dumps(granted or {}).encode())
            self._write_whole(os.path.join(self.directory, "init"), request)

    def init_granted(self) -> dict[str, bool]:
        """What the connection's first answer granted; {} for a session saved before this
        was kept (a successor must then assume nothing was)."""
        if self.directory is None:
            return {}
        try:
            with open(os.path.join(self.directory, "granted"), "rb") as f:
                granted = json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return {}
        return granted if isinstance(granted, dict) else {}

    def init_request(self) -> bytes | None:
        if self.directory is None:
            return None
        try:
            with open(os.path.join(self.directory, "init"), "rb") as f:
                return f.read() or None
        except FileNotFoundError:
            return None

    def replay(self) -> list[list]:
        """The records written so far; a torn last line (a kill in mid-write) is dropped."""
        if self.directory is None:
            return []
        with open(os.path.join(self.directory, "journal"), "rb") as f:
            lines = f.read().split(b"\n")
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        self.records = len(records)
        return records

    def add(self, record: list) -> None:
        if self._fd >= 0:
            self._pending.append(json.dumps(record, separators=(",", ":")))

    @property
    def pending(self) -> bool:
        """Whether records were added since the last write."""
        return bool(self._pending)

    def flush(self) -> None:
        """Write what was added; called before the kernel gets the answer that depends on it."""
        if not self._pending:
            return
        data = ("\n".join(self._pending) + "\n").encode()
        self.records += len(self._pending)
        self._pending.clear()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            self._warn(e)

    def rewrite(self, records: list[list]) -> None:
        """Replace the journal with `records` (a snapshot of what is live)."""
        if self._fd < 0:
            return
        self._pending.clear()
        path = os.path.join(self.directory, "journal")
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        try:
            self._write_whole(path, data)
            fd = self._open(path, os.O_APPEND)
        except OSError as e:
            self._warn(e)
            return
        os.close(self._fd)
        self._fd = fd
        self.records = len(records)

    def _write_whole(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp"
        fd = self._open(tmp, os.O_TRUNC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _warn(self, error: OSError) -> None:
        """A full or broken disk costs the mount its successor, never a request."""
        if not self._failed:
            self._failed = True
            log.get("csi.fuse").warning("session journal not written: a restarted daemon "
                                        "will not resume this mount", error=str(error),
                                        directory=self.directory)

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
