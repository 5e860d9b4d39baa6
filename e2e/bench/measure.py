"""What the bench times, and the system facts it needs: reads, page cache, peak RSS.

Every reader here is single-threaded and tool-neutral, so eddy, its peers and the tmpfs
reference are read the same way: one file with 1 MiB `read()`s (what `cp` and `cat` do), a
tree with `find | xargs cat` (what a user's shell does), or a safetensors file mapped and its
tensors copied out in shuffled order (what a model loader does: `load_tensors`). The S3
reference reads in parallel on purpose: it is what the source and client can deliver at best
(see `s3raw`).
"""

from __future__ import annotations

import filecmp
import json
import mmap
import os
import random
import subprocess
import tempfile
import time
from dataclasses import dataclass

import xxhash

CHUNK = 1 << 20
LOADER_SEED = 18  # the order the loader copies tensors in: shuffled, the same every run


@dataclass(frozen=True)
class Timing:
    """One timed read: how long, how many bytes and files it got."""

    seconds: float
    bytes: int
    files: int = 1

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / 1e6

    @property
    def files_s(self) -> float:
        return self.files / self.seconds


def read_file(path: str) -> Timing:
    """Read the whole file with 1 MiB reads."""
    fd = os.open(path, os.O_RDONLY)
    total = 0
    start = time.perf_counter()
    try:
        while chunk := os.read(fd, CHUNK):
            total += len(chunk)
    finally:
        os.close(fd)
    return Timing(time.perf_counter() - start, total)


def load_tensors(path: str, seed: int = LOADER_SEED) -> tuple[Timing, int]:
    """Map a safetensors file and copy each tensor out of the mapping, in shuffled order, as
    vLLM or transformers do (page faults, not read() calls); the time, and the sum of the
    tensors' xxh3 (taken outside the timed part) to check the bytes against the source's.

    Like `safetensors.safe_open`, it reads the header from the mapping too. Each tensor is
    copied into one reused buffer (a loader copies it to a GPU); counted bytes are the
    header's and the tensors'.
    """
    digest, hashing = 0, 0.0
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped:
            n = int.from_bytes(mapped[:8], "little")
            header = json.loads(mapped[8:8 + n])
            ranges = [(8 + n + info["data_offsets"][0], 8 + n + info["data_offsets"][1])
                      for name, info in header.items() if name != "__metadata__"]
            random.Random(seed).shuffle(ranges)
            buffer = bytearray(max((end - begin for begin, end in ranges), default=0))
            total = 8 + n
            with memoryview(mapped) as view, memoryview(buffer) as into:
                for begin, end in ranges:
                    into[:end - begin] = view[begin:end]
                    total += end - begin
                    hashed = time.perf_counter()
                    digest += xxhash.xxh3_64_intdigest(into[:end - begin])
                    hashing += time.perf_counter() - hashed
    finally:
        os.close(fd)
    return Timing(time.perf_counter() - start - hashing, total), digest % (1 << 64)


def same_bytes(a: str, b: str) -> bool:
    """Whether two files hold the same bytes, both read in full on every call: filecmp keeps
    the outcome of each pair keyed by size and mtime, so a second check of a file at the same
    path (a new mount on the same mountpoint) would not have read it."""
    filecmp.clear_cache()
    return filecmp.cmp(a, b, shallow=False)


def read_tree(root: str) -> Timing:
    """`find ROOT -type f | xargs cat`: list the tree, then read every file in turn.

    The bytes are counted by `wc -c` and the files by `find`, so a tool that lists or reads
    less than the source holds shows up as a short count, not as a fast figure.
    """
    script = 'find "$1" -type f -print0 | tee "$2" | xargs -0 -r cat | wc -c'
    fd, names = tempfile.mkstemp(prefix="eddy-bench-names-")
    os.close(fd)
    try:
        start = time.perf_counter()
        out = subprocess.run(["bash", "-o", "pipefail", "-c", script, "bash", root, names],
                             check=True, capture_output=True, text=True).stdout
        seconds = time.perf_counter() - start
        with open(names, "rb") as f:
            files = f.read().count(b"\0")
    finally:
        os.unlink(names)
    return Timing(seconds, int(out), files)


def drop_caches() -> None:
    """Write back and drop the kernel's page, dentry and inode caches (root only).

    tmpfs pages are not dropped: data kept on tmpfs (the source copy, the S3 server's
    volumes, MEM tiers) stays in memory, everything read through a mount does not.
    """
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM of a live process in MiB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def mem_available_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) >> 10
    return -1


def page_cache_mib(path: str) -> float | None:
    """How much of `path` the kernel page cache holds (util-linux `fincore`); None if unknown.

    Tells a hot read that missed the page cache (memory pressure from elsewhere on a shared
    machine) from one that was slow while served from it.
    """
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                             capture_output=True, text=True, timeout=30)
        return int(out.stdout.split()[0]) / 2**20 if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None
