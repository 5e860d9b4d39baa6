"""How fast a disk reads back a file, by the way it was written: in one sequential stream (a
copy), or as a cache tier fills an extent (4 MiB blocks written at their own offsets by 6
threads, each finishing when its fetch would). Page cache dropped before each read, the order
alternating each round; prints MB/s and the ext4 extent count of each file (filefrag).

    sudo .venv/bin/python docs/passthrough/write-order.py [DIR] [ROUNDS]   (/var/tmp, 4)

The bench's SSD reference reads a fresh copy; eddy's one-shot read reads an extent filled the
second way. On the bench VM the second kind read 20-35% slower with the same ext4 layout
(README "Big file on a disk tier").
"""

import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for e2e.bench
from e2e.bench.measure import drop_caches, read_file  # noqa: E402 - after the path

SIZE = 2 << 30
BLOCK = 4 << 20
FETCHES = 6  # a prefetch's loads in flight (8 source slots, a quarter kept for readers)


def sequential(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        for _ in range(SIZE // BLOCK):
            f.write(data)


def as_a_tier_fills(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def store(index: int) -> None:
        time.sleep(0.005 * random.random())  # fetches end in no fixed order
        os.pwrite(fd, data, index * BLOCK)

    try:
        with ThreadPoolExecutor(FETCHES) as pool:
            list(pool.map(store, range(SIZE // BLOCK)))
    finally:
        os.close(fd)


def extents(path: str) -> str:
    out = subprocess.run(["filefrag", path], capture_output=True, text=True).stdout
    return out.rsplit(":", 1)[-1].strip()


def main() -> None:
    where = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    data = os.urandom(BLOCK)
    ways = [("sequential", sequential), ("as a tier fills", as_a_tier_fills)]
    with tempfile.TemporaryDirectory(prefix="eddy-write-order-", dir=where) as root:
        for n in range(rounds):
            for name, write in ways if n % 2 == 0 else ways[::-1]:
                path = os.path.join(root, "file")
                write(path, data)
                drop_caches()
                print(f"round {n} {name:16} {read_file(path).mb_s:7.0f} MB/s  "
                      f"({extents(path)})", flush=True)
                os.unlink(path)


if __name__ == "__main__":
    main()
