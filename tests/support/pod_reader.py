"""A pod's reader for fault tests: run in its own private mount namespace, as a container is.

    unshare -m --propagation private python -m tests.support.pod_reader CONFIG

CONFIG is JSON: {"hold": FILE, "others": [FILE, ...], "sha256": {FILE: HEX}, "chunk": BYTES,
"rate": BYTES_PER_S, "every": N, "until": UNIX_TIME, "passes": N, "map": BOOL}. FILE is opened
at once and that one descriptor is read to its end, `passes` times (or until `until`), `chunk`
bytes per read() at about `rate` (with "map", copied out of a shared read-only mapping of it
instead, as a model loader does: a fault the mount fails kills the reader); after every
`every` reads one of `others` is opened by path, read whole and checked. Between passes the
file's cached pages are dropped, so the next pass asks the mount again. Every read is timed
and every failure kept, never raised.

Prints one JSON line per 64 MiB read ({"at": bytes}, so a test can time its fault), then a
last line: {"done": true, "bytes": N, "passes": N, "path_reads": N, "failures": [...],
"mismatches": [...], "worst_wait": SECONDS}.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import sys
import time

PROGRESS_EVERY = 64 << 20


def main() -> int:
    config = json.loads(sys.argv[1])
    hold, others, expected = config["hold"], config.get("others", []), config["sha256"]
    chunk, rate = config.get("chunk", 1 << 20), config.get("rate", 0)
    every = config.get("every", 64)
    until, passes = config.get("until", 0), config.get("passes", 1)
    failures, mismatches = [], []
    worst, total, path_reads, done_passes, reads = 0.0, 0, 0, 0, 0
    fd = os.open(hold, os.O_RDONLY)
    mapped = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) \
        if config.get("map") else None
    say({"opened": hold})
    started = time.monotonic()
    next_progress = PROGRESS_EVERY

    def timed(call, *args):
        nonlocal worst
        t = time.monotonic()
        try:
            return call(*args)
        finally:
            worst = max(worst, time.monotonic() - t)

    while done_passes < passes or (until and time.time() < until):
        digest, offset = hashlib.sha256(), 0
        while True:
            try:
                data = timed(os.pread, fd, chunk, offset) if mapped is None else \
                    timed(mapped.__getitem__, slice(offset, offset + chunk))
            except OSError as e:
                failures.append(f"read of {hold} at {offset}: {e}")
                offset += chunk  # keep going: how many fail is what the test wants to know
                continue
            if not data:
                break
            digest.update(data)
            offset += len(data)
            total += len(data)
            reads += 1
            if total >= next_progress:
                say({"at": total})
                next_progress += PROGRESS_EVERY
            if others and reads % every == 0:
                path = others[(reads // every) % len(others)]
                try:
                    with timed(open, path, "rb") as f:
                        got = hashlib.sha256(timed(f.read)).hexdigest()
                    path_reads += 1
                    if got != expected[path]:
                        mismatches.append(path)
                except OSError as e:
                    failures.append(f"open/read of {path}: {e}")
            if rate:
                ahead = total / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if digest.hexdigest() != expected[hold]:
            mismatches.append(hold)
        done_passes += 1
        if mapped is not None:
            mapped.madvise(mmap.MADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next pass asks the mount
    if mapped is not None:
        mapped.close()
    os.close(fd)
    say({"done": True, "bytes": total, "passes": done_passes, "path_reads": path_reads,
         "failures": failures[:20], "failure_count": len(failures), "mismatches": mismatches,
         "worst_wait": round(worst, 3)})
    return 0


def say(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
