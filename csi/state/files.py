"""JSON record files that survive a crash: written whole or not at all, read back or set aside.

The node's staging records (staging.py) and the mounter's records (csi/mounter/records.py)
are both one small JSON file per volume that a restarted process must read back; one that a
crash or a hand tore must never stop that process from starting.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from typing import TypeVar

T = TypeVar("T")


def write_json(path: str, data: dict) -> None:
    """Write `data` as JSON to `path` (0600) so that a crash leaves the old file or the new."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_record(path: str, cls: type[T], what: str, problems: list[str]) -> T | None:
    """The dataclass `cls` stored at `path` (unknown keys ignored), or None when it cannot be
    read: then the file is moved aside (`.broken`) and a line saying so joins `problems`."""
    known = {f.name for f in fields(cls)}
    try:
        with open(path) as f:
            data = json.load(f)
        return cls(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError) as e:
        os.replace(path, path + ".broken")
        problems.append(f"{what} {path} cannot be read ({e}); moved aside")
        return None
