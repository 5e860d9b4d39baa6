"""Random sequences of reads, source changes, corruption, maintenance and restarts.

After every step: no tier holds more than its size (in the index and on disk), no dataset
more than its capacity, the index and the tier files agree, and every byte read equals the
source. Blocks demoted out of MEM are always the least recently used ones: the model keeps
its own access counter and compares.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cache_engine.blocks import is_extent
from cache_engine.engine import CacheEngine
from tests.support.engine import BS, make_spec, make_tiers, read_location
from tests.support.fake_source import FakeUfs
from tests.support.tiers import held_bytes

SOURCES = {
    "local:///a": {"x": 3 * BS + 100, "y": 2 * BS, "z": 700},
    "local:///b": {"p": 4 * BS, "q": BS + 1},
}
# (source, tiers, capacity in blocks, secrets): D2 is source A seen with other credentials.
DATASETS = [
    ("local:///a", "", None, {}),
    ("local:///b", "MEM,SSD", 3, {}),
    ("local:///a", "SSD", None, {"accessKeyId": "k", "secretAccessKey": "s"}),
    ("local:///b", "MEM", 2, {"accessKeyId": "k", "secretAccessKey": "s"}),
]


class EngineMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="eddy-prop-")
        self.tiers = make_tiers(self.root, 3, 5, high=0.7, low=0.4)
        self.ufs = {uri: FakeUfs({name: os.urandom(size) for name, size in files.items()})
                    for uri, files in SOURCES.items()}
        self.access: dict[tuple, int] = {}  # block key -> model access counter
        self.clock = 0
        self.engine = None
        self._start()

    def _start(self):
        # The tiers stand for tiers held in RAM, the only ones that get extents.
        self.engine = CacheEngine(self.tiers, os.path.join(self.root, "state"),
                                  open_ufs=lambda spec, secrets: self.ufs[spec.source.uri],
                                  prefetch_workers=2, maintenance=False, pin_seconds=0,
                                  held_in_ram=lambda path: True)
        self.ids = []
        for uri, tiers, cap, secrets in DATASETS:
            spec = make_spec(uri, capacity=cap * BS if cap else None,
                             **({"tiers": tiers} if tiers else {}))
            self.ids.append(self.engine.open_dataset(spec, secrets).dataset_id)

    def teardown(self):
        self.engine.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def _mem(self) -> dict[tuple, str]:
        return {b.key: b.tier for b in self.engine.blocks()}

    def _step(self, action):
        """Run `action`, then check that whatever left MEM for SSD was least recently used."""
        before = self._mem()
        action()
        self.engine.drain()
        after = self._mem()
        demoted = [k for k, t in before.items() if t == "MEM" and after.get(k) == "SSD"]
        stayed = [k for k, t in before.items() if t == "MEM" and after.get(k) == "MEM"]
        if demoted and stayed:
            assert max(self.access[k] for k in demoted) < min(self.access[k] for k in stayed)

    @rule(d=st.integers(0, len(DATASETS) - 1), data=st.data())
    def read(self, d, data):
        uri = DATASETS[d][0]
        ufs = self.ufs[uri]
        name = data.draw(st.sampled_from(sorted(SOURCES[uri])))
        entry = ufs.stat(name)
        index = data.draw(st.integers(0, (entry.size - 1) // BS))
        key = (self.ids[d], name, entry.version, index)

        def action():
            self.clock += 1
            self.access[key] = self.clock
            got = read_location(self.engine, self.ids[d], name, entry.version, index,
                                entry.size)
            assert got == ufs.data(name)[index * BS:(index + 1) * BS]

        self._step(action)

    @rule(uri=st.sampled_from(sorted(SOURCES)), data=st.data())
    def change_source_file(self, uri, data):
        name = data.draw(st.sampled_from(sorted(SOURCES[uri])))
        size = data.draw(st.integers(1, 4 * BS))
        self.ufs[uri].set(name, os.urandom(size))

    @rule()
    def maintain(self):
        self._step(self.engine.maintain)

    @precondition(lambda self: any(not is_extent(b.file) for b in self.engine.blocks()))
    @rule(data=st.data())
    def corrupt_a_block_file(self, data):
        """A block file rots. (An extent lives in RAM, where nothing rots: the kernel reads
        it unchecked; test_extents shows that the block-by-block path still checks it.)"""
        # Dataset ids and file names depend on the node's random key: order by what does not.
        blocks = sorted((b for b in self.engine.blocks() if not is_extent(b.file)),
                        key=lambda b: (self.ids.index(b.key.dataset_id), *b.key[1:]))
        block = data.draw(st.sampled_from(blocks))
        with open(block.file, "r+b") as f:
            head = f.read(4)
            f.seek(0)
            f.write(bytes(b ^ 0xFF for b in head))  # same length, other bytes

    @rule(d=st.integers(0, len(DATASETS) - 1), data=st.data())
    def open_whole_file(self, d, data):
        """What a mount hands the kernel: a whole-file extent, whose bytes are the file's."""
        uri = DATASETS[d][0]
        name = data.draw(st.sampled_from(sorted(SOURCES[uri])))
        entry = self.ufs[uri].stat(name)
        path = self.engine.extent(self.ids[d], name, entry.version, entry.size)
        if path is not None:
            with open(path, "rb") as f:
                assert f.read(entry.size) == self.ufs[uri].data(name)
            for index in range(-(-entry.size // BS)):  # each block was a hit, in this order
                self.clock += 1
                self.access[(self.ids[d], name, entry.version, index)] = self.clock
        self.engine.drain()

    @rule()
    def restart(self):
        self.engine.close()
        self._start()

    @invariant()
    def within_limits_and_consistent(self):
        stats = self.engine.statistics()
        rows = self._rows()
        for tier in self.tiers:
            mine = [(f, offset, length) for t, f, offset, length in rows if t == tier.name]
            files = self._files(tier)
            assert sum(length for _f, _o, length in mine) == stats.tiers[tier.name].used
            assert stats.tiers[tier.name].used <= tier.size
            assert self._stored(tier) <= tier.size
            assert set(files) == {f for f, _o, _l in mine}  # no orphan, no row without a file
            for f, offset, length in mine:
                if is_extent(f):
                    assert files[f] >= offset + length
                else:
                    assert (offset, files[f]) == (0, length)
            assert os.listdir(tier.tmp_dir) == []
        for (_uri, _tiers, cap, _secrets), ds in zip(DATASETS, self.ids, strict=True):
            used = (stats.datasets[ds].used if ds in stats.datasets else 0)
            assert cap is None or used <= cap * BS

    def _rows(self) -> list[tuple[str, str, int, int]]:
        db = sqlite3.connect(os.path.join(self.root, "state", "index.db"))
        try:
            return db.execute('SELECT tier, file, "offset", length FROM blocks').fetchall()
        finally:
            db.close()

    @staticmethod
    def _stored(tier) -> int:
        """Bytes the tier's files hold (an extent filled in place is sparse until whole)."""
        return sum(held_bytes(os.path.join(dirpath, name))
                   for dirpath, _dirs, names in os.walk(tier.blocks_dir) for name in names)

    @staticmethod
    def _files(tier) -> dict[str, int]:
        out = {}
        for dirpath, _dirs, names in os.walk(tier.blocks_dir):
            for name in names:
                full = os.path.join(dirpath, name)
                out[os.path.relpath(full, tier.blocks_dir)] = os.path.getsize(full)
        return out


EngineMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestEngineProperties = EngineMachine.TestCase
