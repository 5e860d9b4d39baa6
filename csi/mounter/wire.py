"""Messages between the node plugin and the mounter: JSON frames on a unix stream socket,
each a 4-byte length and the JSON text, with /dev/fuse descriptors attached to a frame by
SCM_RIGHTS (the only way a descriptor travels between processes that share no parent)."""

from __future__ import annotations

import json
import os
import socket
import struct

HEADER = struct.Struct("!I")
MAX_MESSAGE = 16 << 20
MAX_DESCRIPTORS = 4  # a message carries at most one today


def send(sock: socket.socket, message: dict, fds: list[int] | tuple[int, ...] = ()) -> None:
    data = json.dumps(message).encode()
    frame = HEADER.pack(len(data)) + data
    sent = socket.send_fds(sock, [frame], list(fds)) if fds else 0
    sock.sendall(frame[sent:])


def receive(sock: socket.socket) -> tuple[dict, list[int]]:
    """One message and the descriptors that came with it (the caller closes them)."""
    data, fds, flags, _ = socket.recv_fds(sock, 1 << 16, MAX_DESCRIPTORS)
    try:
        if flags & socket.MSG_CTRUNC:
            raise ConnectionError("a message came with more descriptors than allowed")
        if not data:
            raise EOFError("the peer closed the connection")
        data = bytearray(data)
        while len(data) < HEADER.size:
            data += _more(sock, HEADER.size - len(data))
        (length,) = HEADER.unpack_from(data)
        if length > MAX_MESSAGE:
            raise ConnectionError(f"a message of {length} bytes is over the limit")
        body = data[HEADER.size:]
        while len(body) < length:
            body += _more(sock, min(length - len(body), 1 << 20))
        if len(body) != length:
            raise ConnectionError("a message ran past its length")
        message = json.loads(body)
        if not isinstance(message, dict):
            raise ConnectionError("a message is not a JSON object")
        return message, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _more(sock: socket.socket, n: int) -> bytes:
    chunk = sock.recv(n)
    if not chunk:
        raise ConnectionError("the peer closed the connection in the middle of a message")
    return chunk
