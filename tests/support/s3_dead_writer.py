"""A process that stages a file on an s3:// volume and dies (SIGKILL) before committing it.

    python -m tests.support.s3_dead_writer < {"endpoint", "bucket", "secrets", "staging",
                                              "path", "size", "seed", "part_size"}

It prints "STAGED <streams started>" once every byte is written, then kills itself, as a mount
daemon killed mid-write would die: no close, no commit, the streaming upload cut off.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys

from cache_engine.spec import parse_parameters
from cache_engine.ufs.s3 import S3Ufs
from cache_engine.ufs.s3_staging import StagingDir
from cache_engine.ufs.s3_writes import S3Writes


def main() -> None:
    job = json.load(sys.stdin)
    spec = parse_parameters({"source": f"s3://{job['bucket']}", "endpoint": job["endpoint"]})
    writes = S3Writes(S3Ufs(spec, job["secrets"]), StagingDir(job["staging"]),
                      part_size=job["part_size"])
    staged = writes.open(job["path"], truncate=True)
    data = random.Random(job["seed"]).randbytes(job["size"])
    step = 1 << 20
    for offset in range(0, len(data), step):
        staged.write(offset, data[offset:offset + step])
    print(f"STAGED {staged.statistics.streams_started}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
