"""What a mount daemon is asked to serve: the one JSON object its starter writes on stdin.

    {"parameters": {...}, "secrets": {...}, "engine": {...},
     "session": {"fd": N, "dir": DIR}, "writable": true, "uploads": DIR}

`parameters` and `secrets` are the volume's (objects of strings); `engine` says where blocks
come from (daemon.py); `session`, when present, is the connection the mounter mounted and its
session directory (session.py); `writable` mounts it read-write (writes.py), and an s3://
volume stages what it writes in `uploads` (sources.py). Secrets travel
only here, never on argv, which any user can read in /proc.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from eddy.base.errors import InvalidArgument

from . import device
from .journal import Journal


@dataclass(frozen=True)
class Session:
    """A connection the mounter mounted: its /dev/fuse descriptor here, its session dir."""

    fd: int
    directory: str

    def journal(self) -> Journal:
        return Journal(self.directory)


@dataclass(frozen=True)
class Request:
    """The daemon's stdin, checked (see the module docstring)."""

    parameters: dict[str, str]
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    engine: dict = field(default_factory=dict)
    session: Session | None = None
    writable: bool = False
    uploads: str = ""


def read_request(stream) -> Request:
    """The one JSON object on `stream`; InvalidArgument names what is wrong with it."""
    text = ""
    request = None
    for line in stream:
        text += line
        try:
            request = json.loads(text)
            break
        except json.JSONDecodeError:
            continue
    if not isinstance(request, dict):
        raise InvalidArgument('stdin must hold one JSON object {"parameters": {...}, '
                              '"secrets": {...}}')
    parameters = request.get("parameters")
    secrets = request.get("secrets") or {}
    for key, value in (("parameters", parameters), ("secrets", secrets)):
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise InvalidArgument(f"stdin: {key!r} must be an object of strings")
    engine = request.get("engine") or {}
    if not isinstance(engine, dict):
        raise InvalidArgument("stdin: 'engine' must be an object")
    writable = request.get("writable", False)
    if not isinstance(writable, bool):
        raise InvalidArgument("stdin: 'writable' must be true or false")
    uploads = request.get("uploads", "")
    if not isinstance(uploads, str):
        raise InvalidArgument("stdin: 'uploads' must be a path")
    session = request.get("session")
    if session is not None:
        if not (isinstance(session, dict) and isinstance(session.get("fd"), int)
                and isinstance(session.get("dir"), str)):
            raise InvalidArgument("stdin: 'session' must be {\"fd\": N, \"dir\": PATH}")
        if not device.is_fuse_device(session["fd"]):
            raise InvalidArgument(f"stdin: session fd {session['fd']} is not open on /dev/fuse")
        session = Session(session["fd"], session["dir"])
    return Request(parameters, secrets, engine, session, writable, uploads)
