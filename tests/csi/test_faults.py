"""Any eddy process on a node may die, crash or be upgraded under a running pod: the pod never
notices more than a short stall.

The node runs as a cluster runs it (tests/support/node.py): `eddy mounter` and
`eddy serve --mounter` each in a container of its own, whose SIGKILL ends everything in it.
A pod reads in its own private copy of the mount namespace, so a mount made afterwards on the
host would never reach it: it keeps one descriptor open across the fault and reads it to the
end while it also opens files by path. After each fault: every byte is right (sha256), no read
failed, no read waited 10 s, and the target and the staging path are each mounted once.
"""

from __future__ import annotations

import glob
import hashlib
import json
import mmap
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from csi.fuse.daemon import pyfuse3_can_resume
from csi.fuse.passthrough import pyfuse3_has_passthrough
from eddy.base.pb import csi_pb2
from tests.support.driver import (
    cleanup_mounts,
    create,
    daemon_pids,
    mounts_under,
    stage_and_publish,
    tier_args,
    unpublish_and_unstage,
)
from tests.support.http_source import HttpSource
from tests.support.model_files import loader_in_pod, safetensors_file
from tests.support.node import MounterContainer, PluginContainer, Pod, inner_pid, mounts_at
from tests.support.tiers import wait_compacted
from tests.support.wait import wait_for

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                       reason="needs /dev/fuse and root for real FUSE mounts and namespaces"),
    pytest.mark.skipif(not pyfuse3_can_resume(),
                       reason="stock pyfuse3 cannot resume a mount: `make setup` builds one"),
    pytest.mark.timeout(600),
]

MiB = 1 << 20
BIG = 2048 * MiB  # the file read across each fault
MID = 256 * MiB
RATE = 200 * MiB  # the pod's pace: the fault lands in the middle of its read
MAX_WAIT = 10.0  # no read may wait longer, fault or not


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 2 GiB file, a 256 MiB file and small ones; their hashes by relative path."""
    root = tmp_path_factory.mktemp("dataset")
    hashes = {}
    for name, size in (("big.bin", BIG), ("mid.bin", MID)):
        digest = hashlib.sha256()
        with open(root / name, "wb") as f:
            for _ in range(size // (64 * MiB)):
                chunk = os.urandom(64 * MiB)
                digest.update(chunk)
                f.write(chunk)
        hashes[name] = digest.hexdigest()
    for i in range(12):
        data = os.urandom(4096 + i * 977)
        os.makedirs(root / "tokenizer", exist_ok=True)
        (root / "tokenizer" / f"part-{i}.json").write_bytes(data)
        hashes[f"tokenizer/part-{i}.json"] = hashlib.sha256(data).hexdigest()
    return root, hashes


class Node:
    """The mounter's and the node plugin's containers, restarted as kubelet would."""

    def __init__(self, workdir: str, plugin_args: tuple[str, ...] = ()):
        self.workdir = workdir
        self.plugin_args = plugin_args
        self.mounter = MounterContainer(workdir).start()
        self.plugin = self._plugin().start()

    def _plugin(self) -> PluginContainer:
        return PluginContainer(self.workdir, self.mounter, self.plugin_args)

    def restart_plugin(self) -> None:
        self.plugin = self._plugin().start()

    def restart_mounter(self) -> None:
        self.mounter = MounterContainer(self.workdir).start()

    def holds(self, volumes: int) -> bool:
        """Whether the mounter and the plugin each hold every volume's descriptor again."""
        return all(fuse_descriptors(proc) >= volumes
                   for proc in (self.mounter.proc, self.plugin.proc))

    def stop(self) -> None:
        self.plugin.stop()
        self.mounter.stop()

    def logs(self) -> str:
        return f"--- mounter\n{self.mounter.log()}\n--- plugin\n{self.plugin.log()}"


def fuse_descriptors(container) -> int:
    """/dev/fuse descriptors held by a container's PID 1."""
    pid = inner_pid(container.pid)
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse"
        except OSError:
            continue
    return count


@pytest.fixture
def node(tmp_path):
    nodes = []

    def start(*plugin_args: str) -> Node:
        nodes.append(Node(str(tmp_path / "node"), plugin_args))
        return nodes[-1]

    yield start
    for n in nodes:
        n.stop()
    for pid in daemons_under(str(tmp_path)):
        os.kill(pid, signal.SIGKILL)
    cleanup_mounts(str(tmp_path))


def daemons_under(path: str) -> list[int]:
    """Mount daemons whose mountpoint lies under `path` (a test's leftovers)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace")
        except OSError:
            continue
        if "csi.fuse" in argv and path in argv:
            found.append(int(entry))
    return found


def events(log: str, name: str) -> list[dict]:
    """The JSON log lines of one event."""
    found = []
    for line in log.splitlines():
        if f'"event": "{name}"' in line:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def pod_for(target: str, hashes: dict[str, str], hold: str, **config) -> Pod:
    paths = {os.path.join(target, rel): h for rel, h in hashes.items()}
    others = sorted(p for p in paths if "/tokenizer/" in p)
    return Pod({"hold": os.path.join(target, hold), "others": others, "sha256": paths,
                "rate": RATE, "every": 32, **config})


def assert_unharmed(result: dict, size: int, staging: str, targets: list[str]) -> None:
    assert result["failure_count"] == 0, result["failures"]
    assert result["mismatches"] == []
    assert result["bytes"] == size * result["passes"]
    assert result["path_reads"] > 0
    assert result["worst_wait"] < MAX_WAIT, result
    for path in (staging, *targets):
        assert mounts_at(path) == 1, f"{path} is mounted {mounts_at(path)} times"


def survive(n: Node, tmp_path, dataset, fault, name: str, hold: str = "big.bin",
            parameters: dict | None = None, secrets=None, fault_at: int = 256 * MiB,
            **pod) -> dict:
    """A pod reads `hold` while `fault(n, volume_id)` runs; then the volume is torn down."""
    root, hashes = dataset
    volume = create(n.plugin, name, parameters or {"source": f"local://{root}"})
    staging, targets = stage_and_publish(n.plugin, tmp_path, volume, secrets=secrets,
                                         targets=("pod-a",))
    reader = pod_for(targets[0], hashes, hold, **pod)
    try:
        reader.wait_at(fault_at)
        fault(n, volume.volume_id, reader)
        result = reader.finish(120)
    finally:
        reader.kill()
    size = BIG if hold == "big.bin" else MID
    print(f"{name}: {result['bytes'] >> 20} MiB and {result['path_reads']} files by path read "
          f"across the fault, longest read() {result['worst_wait']} s")
    try:
        assert_unharmed(result, size, staging, targets)
    except AssertionError:
        print(n.logs())
        raise
    unpublish_and_unstage(n.plugin, volume, staging, targets)
    assert daemon_pids(volume.volume_id) == []
    assert mounts_under(str(tmp_path)) == []
    return result


def kill_daemon(n: Node, volume_id: str, reader: Pod) -> None:
    [pid] = daemon_pids(volume_id)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: daemon_pids(volume_id) not in ([], [pid]), 10, "a resumed daemon")


def test_mount_daemon_killed(node, tmp_path, dataset):
    survive(node(), tmp_path, dataset, kill_daemon, "pvc-daemon")


def test_node_plugin_container_killed(node, tmp_path, dataset):
    def fault(n: Node, volume_id: str, reader: Pod) -> None:
        n.plugin.kill()
        at = reader.at
        reader.wait_at(at + 256 * MiB, 30)  # the pod reads on while no plugin runs at all
        n.restart_plugin()
        wait_for(lambda: n.holds(1), 30, "the new plugin to hold the descriptor")

    survive(node(), tmp_path, dataset, fault, "pvc-plugin")


def test_mounter_container_killed(node, tmp_path, dataset):
    def fault(n: Node, volume_id: str, reader: Pod) -> None:
        [old] = daemon_pids(volume_id)
        n.mounter.kill()  # its mount daemons die with it: the pod's reads wait
        assert daemon_pids(volume_id) == []
        n.restart_mounter()
        wait_for(lambda: daemon_pids(volume_id) not in ([], [old]), 30, "a resumed daemon")

    survive(node(), tmp_path, dataset, fault, "pvc-mounter")


def test_plugin_then_mounter_killed(node, tmp_path, dataset):
    def fault(n: Node, volume_id: str, reader: Pod) -> None:
        n.plugin.kill()
        n.restart_plugin()
        wait_for(lambda: n.holds(1), 30, "the new plugin to hold the descriptor")
        n.mounter.kill()
        n.restart_mounter()
        wait_for(lambda: n.holds(1) and daemon_pids(volume_id), 30, "a resumed daemon")
        n.plugin.kill()  # and the plugin once more, now that the mounter holds it again
        n.restart_plugin()

    survive(node(), tmp_path, dataset, fault, "pvc-both")


def test_node_plugin_upgrade(node, tmp_path, dataset):
    def fault(n: Node, volume_id: str, reader: Pod) -> None:
        n.plugin.kill(signal.SIGTERM)  # kubelet stops the old pod of the DaemonSet ...
        n.restart_plugin()  # ... and starts the new version on the same state dir
        wait_for(lambda: n.holds(1), 30, "the new plugin to hold the descriptor")

    survive(node(), tmp_path, dataset, fault, "pvc-upgrade")


def test_requests_in_flight_when_the_daemon_dies(node, tmp_path, dataset):
    """The source stalls, so the daemon holds the pod's read requests unanswered (it read
    them from the kernel and waits for the bytes) when it is killed: the kernel sends them
    again to its successor, and the pod's read() completes."""
    root, hashes = dataset
    with HttpSource(root) as http:
        def fault(n: Node, volume_id: str, reader: Pod) -> None:
            [pid] = daemon_pids(volume_id)
            http.gate.clear()
            asked = len(http.data_gets())
            wait_for(lambda: len(http.data_gets()) > asked, 10, "a read waiting on the source")
            time.sleep(0.5)
            at = reader.progress()
            time.sleep(0.5)
            assert reader.progress() == at  # the pod waits inside read()
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: daemon_pids(volume_id) not in ([], [pid]), 10, "a resumed daemon")
            http.gate.set()

        params = {"source": http.url, "metadataTTL": "immutable", "readAhead": "0"}
        result = survive(node(), tmp_path, (root, hashes), fault, "pvc-inflight",
                         hold="mid.bin", parameters=params, fault_at=64 * MiB,
                         chunk=64 * MiB, rate=64 * MiB, every=1)
    assert result["worst_wait"] >= 1.0  # the stall was inside one read(), and it completed


@pytest.mark.skipif(not pyfuse3_has_passthrough(), reason="needs the passthrough pyfuse3")
def test_passthrough_opens_survive(node, tmp_path, dataset, ram_dir):
    """A file the kernel reads from its extent stays open across the fault; the successor
    knows its backing file, and later opens pass through again."""
    root, hashes = dataset
    mem = ram_dir / "mem"
    n = node(*tier_args(f"MEM:{mem}:1Gi"))
    params = {"source": f"local://{root}", "metadataTTL": "immutable"}
    volume = create(n.plugin, "pvc-passthrough", params)
    staging, targets = stage_and_publish(n.plugin, tmp_path, volume, targets=("pod-a",))
    with open(os.path.join(targets[0], "mid.bin"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == hashes["mid.bin"]  # cold
    wait_compacted(mem, {"mid.bin": range(MID)})  # (only sizes are compared)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    reader = pod_for(targets[0], hashes, "mid.bin", rate=64 * MiB, passes=2)
    try:
        reader.wait_at(64 * MiB)
        kill_daemon(n, volume.volume_id, reader)
        result = reader.finish(120)
    finally:
        reader.kill()
    assert_unharmed(result, MID, staging, targets)
    [resumed] = events(n.mounter.log(), "resumed")
    assert resumed["open_files"] >= 1  # the pod's passthrough open, known to the successor
    unpublish_and_unstage(n.plugin, volume, staging, targets)
    [*_, stats] = events(n.mounter.log(), "unmounted")
    assert stats["errors"] == 0 and stats["open_files"] == 0  # its release was answered


@pytest.mark.skipif(not pyfuse3_has_passthrough(), reason="needs the passthrough pyfuse3")
@pytest.mark.parametrize("granted", [True, False], ids=["granted", "session-without-grants"])
def test_a_mapped_file_read_around_the_page_cache_survives(node, tmp_path, dataset, granted):
    """A pod maps a file the cache does not hold whole (a direct_io open, which the kernel
    lets be mapped only because the first daemon asked at INIT) and faults it in across a
    kill of the daemon. The successor opens new files around the page cache only if the
    session directory says the kernel granted that: a session saved by a daemon that did not
    keep grants (an upgrade) must not have its new opens' maps refused."""
    root, hashes = dataset
    n = node()
    volume = create(n.plugin, f"pvc-mapped-{granted}", {"source": f"local://{root}"})
    staging, targets = stage_and_publish(n.plugin, tmp_path, volume, targets=("pod-a",))
    [saved] = glob.glob(os.path.join(n.mounter.state_dir, "volumes", "*", "session", "granted"))
    with open(saved) as f:
        assert json.load(f) == {"direct_io_mmap": True}
    if not granted:
        os.unlink(saved)
    reader = pod_for(targets[0], hashes, "mid.bin", rate=64 * MiB, map=True)
    try:
        reader.wait_at(64 * MiB)
        kill_daemon(n, volume.volume_id, reader)
        with open(os.path.join(targets[0], "big.bin"), "rb") as f, \
                open(root / "big.bin", "rb") as source, \
                mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
            assert m[:16 * MiB] == source.read(16 * MiB)  # a new open, mapped
        result = reader.finish(120)
    finally:
        reader.kill()
    assert_unharmed(result, MID, staging, targets)
    unpublish_and_unstage(n.plugin, volume, staging, targets)
    [*_, stats] = events(n.mounter.log(), "unmounted")  # the successor's
    assert stats["errors"] == 0
    assert (stats["direct_io_opens"] == 1) is granted, stats


@pytest.mark.skipif(not pyfuse3_has_passthrough(), reason="needs the passthrough pyfuse3")
def test_an_open_waiting_for_its_prefetch_survives_the_daemon_dying(node, tmp_path, ram_dir):
    """A loader's first open of a model waits in the daemon while the engine loads the file
    whole (`prefetchWait`), and the daemon is killed then. The kernel sends the open again to
    the successor, which waits for the same prefetch; the pod maps the model from its extent
    and every byte is right."""
    root = tmp_path / "models"
    root.mkdir()
    model = safetensors_file({f"layers.{i}.weight": 4 * MiB + 4096 * i for i in range(8)})
    (root / "model.safetensors").write_bytes(model)
    n = node(*tier_args(f"MEM:{ram_dir / 'mem'}:256Mi"))
    with HttpSource(root) as http:
        volume = create(n.plugin, "pvc-model-wait", {
            "source": http.url, "metadataTTL": "immutable", "prefetch": "safetensors"})
        staging, targets = stage_and_publish(n.plugin, tmp_path, volume, targets=("pod-a",))
        http.gate.clear()
        loader = loader_in_pod(os.path.join(targets[0], "model.safetensors"))
        try:
            wait_for(lambda: http.data_gets(), 30, "the prefetch to ask for the header")
            time.sleep(0.5)
            assert loader.poll() is None  # its open waits for the prefetch
            [pid] = daemon_pids(volume.volume_id)
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: daemon_pids(volume.volume_id) not in ([], [pid]), 10,
                     "a resumed daemon")
        finally:
            http.gate.set()
        out, err = loader.communicate(timeout=120)
        assert (loader.returncode, out.strip()) == (0, hashlib.sha256(model).hexdigest()), err
        unpublish_and_unstage(n.plugin, volume, staging, targets)
    [*_, stats] = events(n.mounter.log(), "unmounted")  # the successor's
    assert stats["errors"] == 0
    assert (stats["passthrough_opens"], stats["reads"]) == (1, 0), stats


@pytest.fixture
def ram_dir():
    path = tempfile.mkdtemp(prefix="eddy-test-", dir="/dev/shm")
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.s3
def test_s3_volume_daemon_killed(node, tmp_path, dataset, s3_server, s3_bucket):
    root, hashes = dataset
    with open(root / "mid.bin", "rb") as f:
        s3_server.put(s3_bucket, "models/mid.bin", f.read())
    for i in range(12):
        rel = f"tokenizer/part-{i}.json"
        s3_server.put(s3_bucket, f"models/{rel}", (root / rel).read_bytes())
    params = {"source": f"s3://{s3_bucket}/models", "endpoint": s3_server.endpoint}
    s3_hashes = {k: v for k, v in hashes.items() if k != "big.bin"}
    survive(node(), tmp_path, (root, s3_hashes), kill_daemon, "pvc-s3", hold="mid.bin",
            parameters=params, secrets=s3_server.secrets, fault_at=64 * MiB, rate=64 * MiB)


def test_a_mounter_that_is_down_shows_in_volume_stats_and_status(node, tmp_path, dataset):
    """While the mounter is down, the volume's condition says so (and reads wait); once it
    is back, the mount is served again and both say so."""
    root, hashes = dataset
    n = node()
    volume = create(n.plugin, "pvc-status", {"source": f"local://{root}"})
    staging, targets = stage_and_publish(n.plugin, tmp_path, volume, targets=("pod-a",))

    def condition():
        return n.plugin.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
            volume_id=volume.volume_id, volume_path=targets[0])).volume_condition

    def status() -> dict:
        out = subprocess.run([sys.executable, "-m", "eddy.cli", "status", "--json",
                              "--endpoint", n.plugin.engine_endpoint], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        [row] = json.loads(out)
        [mount] = row["mounts"]
        return mount

    assert not condition().abnormal and not status()["abnormal"]
    n.mounter.kill()
    assert condition().abnormal and "mounter does not answer" in condition().message
    assert status()["abnormal"] and "mounter does not answer" in status()["message"]
    n.restart_mounter()
    wait_for(lambda: not condition().abnormal, 30, "the mount served again")
    assert "restarted 1 times" in status()["message"]
    unpublish_and_unstage(n.plugin, volume, staging, targets)


SOAK_SECONDS = 180
SOAK_KILLS = 30


def test_soak_random_kills(node, tmp_path, dataset):
    """30 random kills of daemons, plugin and mounter in 3 minutes under 4 readers on 2
    volumes: no wrong byte, no failed read, nothing left behind."""
    root, hashes = dataset
    n = node()
    rng = random.Random(int(os.environ.get("EDDY_SOAK_SEED", time.time())))
    volumes = [create(n.plugin, f"pvc-soak-{i}", {"source": f"local://{root}"})
               for i in range(2)]
    staged = [stage_and_publish(n.plugin, tmp_path / f"v{i}", v, targets=("pod-a", "pod-b"))
              for i, v in enumerate(volumes)]
    until = time.time() + SOAK_SECONDS
    pods = [(pod_for(target, hashes, "mid.bin", rate=48 * MiB, until=until), staging, targets)
            for staging, targets in staged for target in targets]
    readers = [reader for reader, _, _ in pods]
    kills = []
    try:
        for i in range(SOAK_KILLS):
            time.sleep(max(0.0, (SOAK_SECONDS - 15) / SOAK_KILLS * (i + 1)
                           - (SOAK_SECONDS - (until - time.time()))))
            what = rng.choice(["daemon", "daemon", "plugin", "mounter"])
            kills.append(what)
            if what == "daemon":
                volume = rng.choice(volumes)
                pids = daemon_pids(volume.volume_id)
                os.kill(pids[0], signal.SIGKILL)
            elif what == "plugin":
                n.plugin.kill()
                time.sleep(rng.uniform(0, 2))
                n.restart_plugin()
            else:
                n.mounter.kill()
                time.sleep(rng.uniform(0, 1))
                n.restart_mounter()
            # Kill again only once both holders hold every descriptor and daemons serve.
            wait_for(lambda: n.holds(2) and all(daemon_pids(v.volume_id) for v in volumes),
                     30, f"the node to recover from kill {i + 1} ({what})")
        results = [r.finish(SOAK_SECONDS + 120) for r in readers]
    finally:
        for r in readers:
            r.kill()
    print(f"kills: {kills}; passes: {[r['passes'] for r in results]}; longest read(): "
          f"{[r['worst_wait'] for r in results]} s")
    for result, (_, staging, targets) in zip(results, pods, strict=True):
        assert_unharmed(result, MID, staging, targets)
    for volume, (staging, targets) in zip(volumes, staged, strict=True):
        unpublish_and_unstage(n.plugin, volume, staging, targets)
        assert daemon_pids(volume.volume_id) == []
    n.stop()
    assert mounts_under(str(tmp_path)) == []
