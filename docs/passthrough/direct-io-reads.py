#!/usr/bin/env python3
"""What `directIO: cold` costs a reader of small read()s, and what it does not.

    sudo .venv/bin/python docs/passthrough/direct-io-reads.py [ROUNDS]

(root: mounts.) A 256 MiB file on tmpfs is read cold through `eddy mount` (a local source, a
fresh MEM tier each time, so every open is of a file not cached whole) with read()s of
4 KiB, 64 KiB and 1 MiB, once with `directIO: cold` (the open is direct_io: each read() is
one request to the daemon) and once with `directIO: off` (the page cache and the kernel's
read-ahead answer most small read()s), each round alternating which goes first. Prints
MB/s per read size and mode.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

EDDY = os.environ.get("EDDY", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           "..", "..", ".venv", "bin", "eddy"))
SIZE = 256 << 20
CHUNKS = (4 << 10, 64 << 10, 1 << 20)


def read_cold(source: str, mode: str, chunk: int, work: str) -> float:
    """MB/s of one read of the file, in `chunk`-byte read()s, on a fresh mount and cache."""
    state, mem, mnt = (os.path.join(work, n) for n in ("state", "mem", "mnt"))
    for d in (state, mem):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(mnt, exist_ok=True)
    subprocess.run([EDDY, "mount", f"local://{source}", mnt, "--state-dir", state,
                    "--tier", f"MEM:{mem}:1Gi", "--log-dir", work,
                    "--param", f"directIO={mode}"], check=True, capture_output=True)
    try:
        fd = os.open(os.path.join(mnt, "f.bin"), os.O_RDONLY)
        total, start = 0, time.perf_counter()
        while data := os.read(fd, chunk):
            total += len(data)
        seconds = time.perf_counter() - start
        os.close(fd)
    finally:
        subprocess.run([EDDY, "umount", mnt], check=True, capture_output=True)
    return total / seconds / 1e6


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    work = tempfile.mkdtemp(prefix="eddy-direct-io-", dir="/dev/shm")
    try:
        source = os.path.join(work, "src")
        os.makedirs(source)
        with open(os.path.join(source, "f.bin"), "wb") as f:
            f.write(os.urandom(SIZE))
        for r in range(rounds):
            for mode in ("cold", "off") if r % 2 == 0 else ("off", "cold"):
                for chunk in CHUNKS:
                    mb_s = read_cold(source, mode, chunk, work)
                    print(f"round {r}  directIO={mode:<4}  {chunk >> 10:>5} KiB read()s  "
                          f"{mb_s:7.0f} MB/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
