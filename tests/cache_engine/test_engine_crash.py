"""kill -9 of a busy engine at random instants: the next engine finds index and files agreeing.

A child process runs a CacheEngine over a real local source with small tiers, maintenance on
and several threads reading, prefetching and reporting; the parent SIGKILLs it mid-flight,
then opens a new engine on the same state directory and checks every row, every file and
every byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys

import xxhash

from cache_engine.engine import CacheEngine
from cache_engine.spec import parse_parameters
from cache_engine.tiers import Tier
from tests.support.engine import BS, read_location

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = {f"dir/f{i}.bin": 9 * BS + 1000 * i for i in range(5)}
PARAMS = {"blockSize": "64Ki", "readAhead": "3", "cacheCapacity": "1Mi"}  # 16 blocks

CHILD = r"""
import json, random, sys, threading
from cache_engine.engine import CacheEngine
from cache_engine.spec import parse_parameters
from cache_engine.tiers import Tier
from eddy import log
from tests.support.engine import read_location

log.configure("error")
args = json.loads(sys.argv[1])
tiers = [Tier(*t) for t in args["tiers"]]
engine = CacheEngine(tiers, args["state"], maintenance=True, maintenance_interval=0.01,
                     prefetch_workers=4, pin_seconds=0.02)
ds = engine.open_dataset(parse_parameters(args["params"]), {}).dataset_id
entries = [engine.stat(ds, p) for p in args["files"]]

def hammer(seed):
    rnd = random.Random(seed)
    while True:
        e = rnd.choice(entries)
        n = -(-e.size // 65536)
        i = rnd.randrange(n)
        if rnd.random() < 0.2:
            engine.prefetch(ds, e.path, e.version, e.size, i, 4)
        else:
            read_location(engine, ds, e.path, e.version, i, e.size)

for seed in range(4):
    threading.Thread(target=hammer, args=(seed,), daemon=True).start()
print("READY", flush=True)
threading.Event().wait()
"""


def _signed_to_unsigned(v: int) -> int:
    return v + (1 << 64) if v < 0 else v


def check_state(state: str, tiers: list[Tier]) -> int:
    """Every row has its file (right size and checksum), every file a row, no tmp files."""
    db = sqlite3.connect(os.path.join(state, "index.db"))
    try:
        rows = db.execute("SELECT tier, file, length, checksum FROM blocks").fetchall()
    finally:
        db.close()
    expected = {(tier, file): (length, _signed_to_unsigned(ck))
                for tier, file, length, ck in rows}
    on_disk = set()
    for tier in tiers:
        assert os.listdir(tier.tmp_dir) == [], f"tmp files left in {tier.name}"
        for dirpath, _dirs, names in os.walk(tier.blocks_dir):
            for name in names:
                on_disk.add((tier.name, os.path.relpath(os.path.join(dirpath, name),
                                                         tier.blocks_dir)))
        used = sum(length for (t, _f), (length, _c) in expected.items() if t == tier.name)
        assert used <= tier.size, f"{tier.name} holds {used} > {tier.size}"
    assert on_disk == set(expected), "files and rows disagree"
    for (tier_name, file), (length, ck) in expected.items():
        tier = next(t for t in tiers if t.name == tier_name)
        with open(os.path.join(tier.blocks_dir, file), "rb") as f:
            data = f.read()
        assert len(data) == length and xxhash.xxh3_64_intdigest(data) == ck, file
    return len(rows)


def test_kill_minus_nine_at_random_moments_leaves_a_consistent_cache(tmp_path):
    rnd = random.Random(int.from_bytes(os.urandom(4), "big"))
    src = tmp_path / "src"
    for path, size in FILES.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(os.urandom(size))
    tiers = [Tier("MEM", str(tmp_path / "mem"), 6 * BS, 0.7, 0.4),
             Tier("SSD", str(tmp_path / "ssd"), 8 * BS, 0.8, 0.5)]
    state = str(tmp_path / "state")
    params = {"source": f"local://{src}", **PARAMS}
    args = json.dumps({"tiers": [[t.name, t.path, t.size, t.high, t.low] for t in tiers],
                       "state": state, "params": params, "files": sorted(FILES)})
    env = {**os.environ, "PYTHONPATH": REPO}
    delays = [rnd.uniform(0.05, 1.5) for _ in range(5)]
    for delay in delays:
        child = subprocess.Popen([sys.executable, "-c", CHILD, args], cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = child.stdout.readline()
            assert line.strip() == b"READY", child.stderr.read().decode()[-2000:]
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=delay)  # the child never exits by itself
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
            child.stderr.close()

        engine = CacheEngine(tiers, state, maintenance=False)
        try:
            check_state(state, tiers)
            ds = engine.open_dataset(parse_parameters(params), {}).dataset_id
            assert engine.statistics()["datasets"][ds]["used"] <= 16 * BS
            for path in FILES:
                entry = engine.stat(ds, path)
                want = (src / path).read_bytes()
                for i in range(-(-entry.size // BS)):
                    got = read_location(engine, ds, path, entry.version, i, entry.size)
                    assert got == want[i * BS:(i + 1) * BS], (path, i, delay)
        finally:
            engine.close()
        check_state(state, tiers)
