"""Reading an HTTP body with an overall deadline, for servers that answer a byte at a time.

urllib3's read timeout is per receive: a server that sends one byte a second never trips it,
and a block read from it would hold its thread (and its dataset's slot, see
`cache_engine.budget`) for days. Past the deadline the read stops and lets its bytes go.
"""

from __future__ import annotations

import time

from urllib3.exceptions import ReadTimeoutError


def read_within(resp, url: str, limit: int, decode: bool, seconds: float) -> bytes:
    """Up to `limit` bytes of `resp`'s body (urllib3, not preloaded); ReadTimeoutError, and
    the response closed, when they are still coming after `seconds`."""
    give_up = time.monotonic() + seconds
    chunks, got = [], 0
    while got < limit:
        chunk = resp.read1(limit - got, decode_content=decode)  # what one receive brought
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        if got < limit and time.monotonic() > give_up:
            resp.close()  # the rest is not drained: the connection is dropped, not reused
            raise ReadTimeoutError(None, url, f"still coming after {seconds:g} s (sourceTimeout)")
    return b"".join(chunks)
