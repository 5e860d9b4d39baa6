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

from cache_engine.blocks import is_extent
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
from eddy.base import log
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


def kill_after(script: str, args: str, delay: float) -> None:
    """Run `script` in a child until it is READY, let it work `delay` s, then SIGKILL it."""
    child = subprocess.Popen([sys.executable, "-c", script, args], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": REPO},
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


def check_state(state: str, tiers: list[Tier]) -> int:
    """Every row has its bytes (right size and checksum) in its file, every file a row, no
    tmp files, no tier holding more than its size on disk."""
    db = sqlite3.connect(os.path.join(state, "index.db"))
    try:
        rows = db.execute(
            'SELECT tier, file, "offset", length, checksum FROM blocks').fetchall()
    finally:
        db.close()
    on_disk: dict[tuple[str, str], int] = {}
    for tier in tiers:
        assert os.listdir(tier.tmp_dir) == [], f"tmp files left in {tier.name}"
        for dirpath, _dirs, names in os.walk(tier.blocks_dir):
            for name in names:
                full = os.path.join(dirpath, name)
                on_disk[(tier.name, os.path.relpath(full, tier.blocks_dir))] = \
                    os.path.getsize(full)
        held = sum(n for (t, _f), n in on_disk.items() if t == tier.name)
        assert held <= tier.size, f"{tier.name} holds {held} > {tier.size}"
    assert set(on_disk) == {(t, f) for t, f, *_ in rows}, "files and rows disagree"
    for tier_name, file, offset, length, ck in rows:
        tier = next(t for t in tiers if t.name == tier_name)
        with open(os.path.join(tier.blocks_dir, file), "rb") as f:
            data = os.pread(f.fileno(), length + 1, offset)
        if is_extent(file):
            data = data[:length]  # the next block's bytes follow
        assert len(data) == length and xxhash.xxh3_64_intdigest(data) == \
            _signed_to_unsigned(ck), file
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
    delays = [rnd.uniform(0.05, 1.5) for _ in range(5)]
    for delay in delays:
        kill_after(CHILD, args, delay)

        engine = CacheEngine(tiers, state, maintenance=False)
        try:
            check_state(state, tiers)
            ds = engine.open_dataset(parse_parameters(params), {}).dataset_id
            assert engine.statistics().datasets[ds].used <= 16 * BS
            for path in FILES:
                entry = engine.stat(ds, path)
                want = (src / path).read_bytes()
                for i in range(-(-entry.size // BS)):
                    got = read_location(engine, ds, path, entry.version, i, entry.size)
                    assert got == want[i * BS:(i + 1) * BS], (path, i, delay)
        finally:
            engine.close()
        check_state(state, tiers)


COMPACTING_CHILD = r"""
import json, random, sys
from cache_engine.engine import CacheEngine
from cache_engine.spec import parse_parameters
from cache_engine.tiers import Tier
from eddy.base import log
from tests.support.engine import read_location

log.configure("error")
args = json.loads(sys.argv[1])
engine = CacheEngine([Tier(*t) for t in args["tiers"]], args["state"], maintenance=True,
                     maintenance_interval=0.01, pin_seconds=0.02,
                     held_in_ram=lambda path: True)  # the tier stands for one held in RAM
ds = engine.open_dataset(parse_parameters(args["params"]), {}).dataset_id
entry = engine.stat(ds, args["file"])
n = -(-entry.size // 65536)
print("READY", flush=True)
rnd = random.Random()
while True:  # cache the file whole (compacted into an extent), then drop a block of it
    for i in range(n):
        read_location(engine, ds, entry.path, entry.version, i, entry.size)
    engine.drain()
    engine.extent(ds, entry.path, entry.version, entry.size)
    engine.report_corrupt(ds, entry.path, entry.version, rnd.randrange(n))
"""


def test_kill_minus_nine_while_extents_are_built_leaves_a_consistent_cache(tmp_path):
    rnd = random.Random(int.from_bytes(os.urandom(4), "big"))
    src = tmp_path / "src"
    src.mkdir()
    want = os.urandom(20 * BS - 77)
    (src / "model.bin").write_bytes(want)
    # Room for three copies: a crash can leave two extents of the file, each holding its
    # bytes until its last row leaves, while a third is built.
    tiers = [Tier("MEM", str(tmp_path / "mem"), 80 * BS, 0.9, 0.8)]
    state = str(tmp_path / "state")
    params = {"source": f"local://{src}", "blockSize": "64Ki", "readAhead": "3"}
    args = json.dumps({"tiers": [[t.name, t.path, t.size, t.high, t.low] for t in tiers],
                       "state": state, "params": params, "file": "model.bin"})
    extent_rows = 0
    for delay in [rnd.uniform(0.05, 1.0) for _ in range(5)]:
        kill_after(COMPACTING_CHILD, args, delay)
        db = sqlite3.connect(os.path.join(state, "index.db"))
        try:
            extent_rows += db.execute(
                "SELECT count(*) FROM blocks WHERE file LIKE '%.extent'").fetchone()[0]
        finally:
            db.close()

        engine = CacheEngine(tiers, state, maintenance=False, held_in_ram=lambda path: True)
        try:
            check_state(state, tiers)
            ds = engine.open_dataset(parse_parameters(params), {}).dataset_id
            entry = engine.stat(ds, "model.bin")
            for i in range(20):
                got = read_location(engine, ds, entry.path, entry.version, i, entry.size)
                assert got == want[i * BS:(i + 1) * BS], (i, delay)
            engine.extent(ds, entry.path, entry.version, entry.size)  # compacts if needed
            engine.drain()
            whole = engine.extent(ds, entry.path, entry.version, entry.size)
            assert whole is not None, delay
            with open(whole, "rb") as f:
                assert f.read() == want, delay
        finally:
            engine.close()
        check_state(state, tiers)
    assert extent_rows, "no kill found an extent: the test did not test them"
