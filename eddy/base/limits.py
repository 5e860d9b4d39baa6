"""How long the strings eddy takes from outside may be, and which characters they may hold.

Every name, path and value a CO, a StorageClass or a command line hands eddy ends somewhere
with a hard limit of its own: a file name (NAME_MAX, 255 bytes), a path (PATH_MAX, 4096), a
command line (no NUL), a ConfigMap (1 MiB), a gRPC status message (8 KiB of metadata, after
percent-encoding). Checked at the door, a value past one of them is INVALID_ARGUMENT naming its
field instead of a failure deep inside (ENAMETOOLONG, "embedded null byte", a 422 retried
forever). The checks return the problem as text ("" when there is none), so that each caller
raises its own error kind with the field named as its users know it.
"""

from __future__ import annotations

import re

NAME_MAX = 255  # bytes in one path component (Linux NAME_MAX)
PATH_MAX = 4096  # bytes in a whole path (Linux PATH_MAX)
MESSAGE_MAX = 1024  # bytes of an error message shown to a caller
SHOWN_MAX = 64  # characters of an offending value quoted in a message

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def text_problem(text: str, limit: int) -> str:
    """Why `text` cannot be taken ("" if it can): not UTF-8, over `limit` bytes, or a control
    character (NUL, newline, escape...) in it."""
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate, e.g. from a command line's stray byte
        return "is not valid UTF-8"
    if size > limit:
        return f"is {size} bytes long, over the limit of {limit}"
    if _CONTROL.search(text):
        return "must not contain control characters"
    return ""


def path_problem(path: str, absolute: bool = True) -> str:
    """Why `path` cannot be taken ("" if it can): `text_problem` with PATH_MAX, relative when
    it must be absolute, or a component over NAME_MAX."""
    problem = text_problem(path, PATH_MAX)
    if problem:
        return problem
    if absolute and not path.startswith("/"):
        return f"must be an absolute path, not {shown(path)}"
    longest = max(len(part.encode()) for part in path.split("/"))
    if longest > NAME_MAX:
        return f"has a component of {longest} bytes, over the limit of {NAME_MAX}"
    return ""


def cut(value: str, limit: int = SHOWN_MAX) -> str:
    """`value` for a message: its first `limit` characters and "..." when it is longer."""
    return value if len(value) <= limit else value[:limit] + "..."


def shown(value: str, limit: int = SHOWN_MAX) -> str:
    """`value` cut as by `cut` and quoted, control characters escaped."""
    return repr(cut(value, limit))


def bounded(message: str, limit: int = MESSAGE_MAX) -> str:
    """`message` cut to at most `limit` UTF-8 bytes; it keeps its start, which names the
    field. (gRPC drops a call whose status message is too long and answers RESOURCE_EXHAUSTED.)"""
    data = message.encode(errors="replace")
    if len(data) <= limit:
        return data.decode()
    return data[:limit - 4].decode(errors="ignore") + " ..."
