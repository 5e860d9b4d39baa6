"""A minute of load on one dataset: eight pods on two volumes, a preload, a MEM tier that holds
a fifth of the data, so blocks are evicted all the time.

Each pod is a reader in its own mount namespace (tests/support/pod_reader.py): it holds one
file open and reads it through again and again, and between reads opens the volume's other
files by path, every byte checked against its sha256 and every read timed. Meanwhile a preload
of the dataset is asked for again whenever the last one ended, and the MEM tier's files are
measured every tenth of a second. Asserted: no wrong byte, no failed read, no read that waited
10 s, every pod done in time, the tier never over its size, every preload ended as a preload
may. Printed: the bytes read, the tier's peak, and the memory (RSS) of every eddy process from
the start to the end, six times in between. EDDY_LOAD_SECONDS shortens (or lengthens) the run.
"""

from __future__ import annotations

import os
import threading
import time

import grpc
import pytest

from eddy.base.pb import cache_pb2, cache_pb2_grpc
from tests.support.fuse import fuse_problem
from tests.support.isolation import MiB, Node, write_files
from tests.support.mounts import Tmpfs
from tests.support.node import Pod
from tests.support.tiers import tier_bytes

DURATION = float(os.environ.get("EDDY_LOAD_SECONDS", "60"))
TIER = 24 * MiB  # the MEM tier: a fifth of the dataset
MAX_WAIT = 10.0  # no read may wait longer

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(DURATION + 240),
              pytest.mark.skipif(fuse_problem() is not None, reason=str(fuse_problem()))]


@pytest.fixture
def filesystems():
    mounts = Tmpfs()
    yield mounts
    mounts.unmount_all()


class TierWatch:
    """Samples a tier's block files (and its filesystem's use) until stopped; the peaks."""

    def __init__(self, tier: str, mount: str):
        self.tier, self.mount = tier, mount
        self.peak = self.peak_fs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tier-watch")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, tier_bytes(self.tier))
            st = os.statvfs(self.mount)
            self.peak_fs = max(self.peak_fs, (st.f_blocks - st.f_bfree) * st.f_frsize)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class Preloads:
    """Asks the engine for a preload of the dataset whenever the last one has ended."""

    def __init__(self, node: Node, volume_id: str):
        channel = grpc.insecure_channel(node.driver.engine_endpoint)
        self._engine = cache_pb2_grpc.CacheEngineStub(channel)
        self._target = cache_pb2.PreloadTarget(volume_id=volume_id)
        self.ended: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="preloads")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            job = self._engine.GetPreload(self._target, timeout=30)
            if job.state != "Running":
                self.ended[job.state] = self.ended.get(job.state, 0) + 1
                self._engine.Preload(cache_pb2.PreloadRequest(target=self._target), timeout=30)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(40)


class RssWatch:
    """The RSS of every eddy process of `node`, taken every `every` seconds until stopped."""

    def __init__(self, node: Node, every: float):
        self.node, self.every = node, every
        self.taken: dict[str, dict[str, float]] = {}
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-watch")
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.take()
            if self._stop.wait(self.every):
                return

    def take(self) -> None:
        self.taken[f"{time.monotonic() - self._started:.0f}s"] = self.node.rss()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.take()


def rss_table(snapshots: dict[str, dict[str, float]]) -> str:
    names = sorted({name for snap in snapshots.values() for name in snap})
    lines = [f"{'RSS MiB':<12}" + "".join(f"{when:>10}" for when in snapshots)]
    lines += [f"{name:<12}" + "".join(f"{snap.get(name, 0):>10.0f}"
                                      for snap in snapshots.values()) for name in names]
    return "\n".join(lines)


def test_eight_pods_two_volumes_one_dataset_and_a_preload(tmp_path, filesystems):
    data = tmp_path / "data"
    hashes = write_files(data, {f"part-{i:02}.bin": os.urandom(8 * MiB) for i in range(16)})
    mem = filesystems.mount(tmp_path / "mem", "64m")
    node = Node(tmp_path, [f"MEM:{mem}/tier:{TIER // MiB}Mi"]).start()
    pods: list[Pod] = []
    try:
        params = {"source": f"local://{data}", "metadataTTL": "immutable"}
        volumes = [node.stage("a", {**params, "preload": "true"}), node.stage("b", params)]
        rss = RssWatch(node, DURATION / 6)
        watch = TierWatch(os.path.join(mem, "tier"), mem)
        preloads = Preloads(node, volumes[0].volume_id)
        names = sorted(hashes)
        until = time.time() + DURATION
        for i in range(8):
            mount = volumes[i % 2].mount
            paths = {os.path.join(mount, name): digest for name, digest in hashes.items()}
            pods.append(Pod({"hold": os.path.join(mount, names[i]), "others": sorted(paths),
                             "sha256": paths, "until": until, "every": 4}))
        results = [pod.finish(DURATION + 60) for pod in pods]
        rss.stop()
        preloads.stop()
        watch.stop()
        total = sum(r["bytes"] for r in results)
        print(f"\n8 pods read {total / MiB:.0f} MiB (+ {sum(r['path_reads'] for r in results)} "
              f"files by path) in {DURATION:.0f} s; MEM tier {TIER // MiB} MiB: peak "
              f"{watch.peak / MiB:.1f} MiB of block files, {watch.peak_fs / MiB:.1f} MiB of "
              f"its tmpfs used; preloads ended: {preloads.ended}; longest read "
              f"{max(r['worst_wait'] for r in results):.2f} s\n{rss_table(rss.taken)}")
        for r in results:
            assert r["failure_count"] == 0, r["failures"]
            assert r["mismatches"] == []
            assert r["worst_wait"] < MAX_WAIT
        assert watch.peak <= TIER
        assert set(preloads.ended) <= {"Complete", "CapacityReached"}, preloads.ended
        node.unstage_all()
        assert node.errors_logged() == []
    finally:
        for pod in pods:
            pod.kill()
        node.close()
