"""Real mounts reading through the node's cache engine, as a pod on a node would.

Each test runs the real `eddy serve` (or `eddy mount`) with small tiers under tmp_path, stages
volumes over CSI, reads through the FUSE mount and checks what a user would notice: the bytes,
the tier directories on disk (a block file holds exactly one block's bytes, so its hash tells
which block it is), and how many requests reached the source.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types

import pytest

from cache_engine.blocks import is_extent
from csi.fuse.passthrough import pyfuse3_has_passthrough
from eddy.base.mounttable import in_memory
from eddy.base.pb import cache_pb2
from tests.support.driver import (
    DriverProcess,
    cleanup_mounts,
    create,
    daemon_pids,
    mounts_under,
    sha,
    stage_and_publish,
    tier_args,
    unpublish_and_unstage,
)
from tests.support.http_source import HttpSource
from tests.support.logs import log_events
from tests.support.model_files import load_in_pod, safetensors_file
from tests.support.tiers import flip_a_byte, tier_bytes, tier_files, wait_compacted
from tests.support.wait import wait_for

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                       reason="needs /dev/fuse and root for real FUSE and bind mounts"),
    pytest.mark.timeout(180),
]

MiB = 1 << 20


# --- helpers ---------------------------------------------------------------------------------


def write_tree(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def read_file(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def assert_files(mount_dir, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert sha(read_file(os.path.join(mount_dir, rel))) == sha(data), rel


def block_hashes(files: dict[str, bytes], block_size: int) -> set[str]:
    """The hash of every block of every file: what a complete cache holds, block by block."""
    return {sha(data[i:i + block_size]) for data in files.values()
            for i in range(0, len(data), block_size)}


def cached_hashes(*tier_paths, block_size: int) -> set[str]:
    """The hash of every block in these tiers: a block file, or each block of an extent (a
    file's blocks at their own offsets; a block that went to another tier is a hole here)."""
    out = set()
    for tier in tier_paths:
        for path in tier_files(tier):
            try:
                data = read_file(path)
                written = written_at(path, range(0, len(data), block_size))
            except FileNotFoundError:
                continue  # moved to another tier or evicted meanwhile
            if not is_extent(path):
                out.add(sha(data))
                continue
            out.update(sha(data[i:i + block_size]) for i in written)
    return out


def files_and_status(drv, tiers: dict[str, pathlib.Path]) -> tuple[dict, dict, int]:
    """By tier, the bytes its files hold and the bytes the engine's status says they hold (its
    rows plus its held bytes); and the bytes all the rows cover."""
    status = drv.engine_stub().Status(cache_pb2.StatusRequest(), timeout=10)
    return ({name: tier_bytes(path) for name, path in tiers.items()},
            {name: status.tier_used[name] + status.tier_held[name] for name in tiers},
            sum(status.tier_used[name] for name in tiers))


def written_at(path: str, offsets: range) -> list[int]:
    """Which of `offsets` start data in the file, not a hole (blocks are written whole)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        out = []
        for offset in offsets:
            try:
                if os.lseek(fd, offset, os.SEEK_DATA) == offset:
                    out.append(offset)
            except OSError:  # ENXIO: only a hole after it
                break
        return out
    finally:
        os.close(fd)


def block_ids(tier_path) -> set[str]:
    """Which blocks a tier holds: a block file is named `<hash of its key>-<random>`, and a
    block keeps the hash when it moves to another tier."""
    return {os.path.basename(p).split("-")[0] for p in tier_files(tier_path)}


class TierWatch:
    """Samples a tier in a thread: the most bytes it held at once, and every block seen in it."""

    def __init__(self, tier_path):
        self._tier = tier_path
        self.peak = 0
        self.samples = 0
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tier_bytes(self._tier))
            self.seen |= block_ids(self._tier)
            self.samples += 1
            time.sleep(0.002)

    def __enter__(self) -> TierWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --- 1. a dataset larger than the MEM tier ---------------------------------------------------


def test_dataset_larger_than_the_mem_tier_spills_to_ssd(tmp_path):
    src, mem, ssd = tmp_path / "dataset", tmp_path / "mem", tmp_path / "ssd"
    files = {"train/big.bin": os.urandom(20 * MiB),
             "train/tail.bin": os.urandom(4 * MiB + 123),
             "labels.txt": b"cat\ndog\n" * 1000}
    write_tree(src, files)
    total = sum(len(d) for d in files.values())
    mem_size = 8 * MiB
    drv = DriverProcess(str(tmp_path / "driver"), extra_args=tier_args(
        f"MEM:{mem}:8Mi:0.9:0.6", f"SSD:{ssd}:64Mi")).start()
    try:
        volume = create(drv, "pvc-spill", {
            "source": f"local://{src}", "tiers": "MEM,SSD", "blockSize": "1Mi",
            "metadataTTL": "immutable"})
        staging, [target] = stage_and_publish(drv, tmp_path, volume, targets=("pod-a",))
        with TierWatch(mem) as mem_use:
            assert_files(target, files)
            # Demotion runs in the background: keep watching until every block has settled,
            # each in one row, and each tier's files hold what the engine says: its rows plus
            # the bytes of rows gone from an extent still in use (held until it goes).
            want = block_hashes(files, MiB)

            def settled() -> bool:
                on_disk, said, rows = files_and_status(drv, {"MEM": mem, "SSD": ssd})
                return (want <= cached_hashes(mem, ssd, block_size=MiB) and on_disk == said
                        and rows == total)

            try:
                wait_for(settled, what="every block cached once in MEM or SSD, as the status says")
            except AssertionError as e:  # say which part never came
                missing = len(want - cached_hashes(mem, ssd, block_size=MiB))
                on_disk, said, rows = files_and_status(drv, {"MEM": mem, "SSD": ssd})
                raise AssertionError(
                    f"{e}: {missing} of {len(want)} blocks missing; the tiers' files hold "
                    f"{on_disk}, the status says {said}, its rows cover {rows} of {total} "
                    "bytes") from None
        assert mem_use.samples > 10
        assert 0 < mem_use.peak <= mem_size, f"MEM tier held {mem_use.peak} bytes"
        assert tier_bytes(mem) <= mem_size
        ssd_bytes = tier_bytes(ssd)
        assert ssd_bytes >= total - mem_size, "blocks beyond the MEM tier went to SSD"
        demoted = mem_use.seen & block_ids(ssd)
        assert demoted, "no block seen in MEM was later found on SSD"
        assert cached_hashes(ssd, block_size=MiB) <= want  # whole, real blocks
        assert cached_hashes(mem, ssd, block_size=MiB) == want
        assert_files(target, files)  # and read back right from where they are now
        unpublish_and_unstage(drv, volume, staging, [target])
    finally:
        drv.stop()
        cleanup_mounts(str(tmp_path))


# --- 1b. a file cached whole is read by the kernel (FUSE passthrough) ------------------------


@pytest.fixture
def ram_dir():
    """A directory on /dev/shm (tmpfs), removed afterwards: a MEM tier that gets extents."""
    path = tempfile.mkdtemp(prefix="eddy-test-", dir="/dev/shm")
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


def unmounted_statistics(log_path: str) -> list[dict]:
    """The statistics every mount daemon logged when it unmounted."""
    return log_events(log_path, "unmounted")


@pytest.mark.skipif(not pyfuse3_has_passthrough(),
                    reason="stock pyfuse3 cannot ask for passthrough: `make setup` builds one")
def test_a_file_cached_whole_is_read_by_the_kernel_from_its_extent(tmp_path, ram_dir):
    src, mem = tmp_path / "dataset", ram_dir / "mem"
    assert in_memory(str(mem)), "the MEM tier must be on tmpfs to get extents"
    files = {"model.bin": os.urandom(8 * MiB + 3), "config.json": b'{"layers": 32}\n'}
    write_tree(src, files)
    drv = DriverProcess(str(tmp_path / "driver"),
                        extra_args=tier_args(f"MEM:{mem}:64Mi")).start()
    try:
        volume = create(drv, "pvc-passthrough", {"source": f"local://{src}", "blockSize": "1Mi",
                                                 "metadataTTL": "immutable"})
        staging, targets = stage_and_publish(drv, tmp_path, volume, targets=("pod-a", "pod-b"))
        assert_files(targets[0], files)  # cold: block by block through the daemon
        wait_compacted(mem, files)
        assert cached_hashes(mem, block_size=MiB) == block_hashes(files, MiB)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        assert_files(targets[1], files)  # warm, in another pod: the kernel reads the extent
        unpublish_and_unstage(drv, volume, staging, targets)
        [stats] = unmounted_statistics(drv.log_path)
        assert stats["passthrough_opens"] == 1  # the model's second open; config.json is small
        assert stats["errors"] == 0
    finally:
        drv.stop()
        cleanup_mounts(str(tmp_path))


@pytest.mark.skipif(not pyfuse3_has_passthrough(),
                    reason="stock pyfuse3 cannot ask for passthrough: `make setup` builds one")
@pytest.mark.parametrize("wait", ["60", "0"], ids=["waits", "prefetchWait-0"])
def test_a_loader_s_first_open_of_a_model_waits_for_its_prefetch_then_maps_the_extent(
        tmp_path, ram_dir, wait):
    """With `prefetch: safetensors`, a loader's first open of a cold model waits while the
    engine loads it whole, then the kernel maps the tier's copy: no fault reaches the daemon,
    and no second copy fills the page cache. `prefetchWait: 0` opens at once instead (the
    faults then read through the daemon)."""
    src, mem = tmp_path / "dataset", ram_dir / "mem"
    model = safetensors_file({f"layers.{i}.weight": MiB + 4096 * i for i in range(12)})
    write_tree(src, {"model.safetensors": model})
    drv = DriverProcess(str(tmp_path / "driver"),
                        extra_args=tier_args(f"MEM:{mem}:64Mi")).start()
    try:
        volume = create(drv, f"pvc-model-{wait}", {
            "source": f"local://{src}", "blockSize": "1Mi", "metadataTTL": "immutable",
            "prefetch": "safetensors", "prefetchWait": wait})
        staging, targets = stage_and_publish(drv, tmp_path, volume, targets=("pod-a",))
        assert load_in_pod(os.path.join(targets[0], "model.safetensors")) == sha(model)
        unpublish_and_unstage(drv, volume, staging, targets)
        [stats] = unmounted_statistics(drv.log_path)
        assert stats["errors"] == 0
        if wait == "0":
            assert (stats["passthrough_opens"], stats["direct_io_opens"]) == (0, 1)
            assert stats["reads"] > 0
        else:
            assert (stats["passthrough_opens"], stats["direct_io_opens"]) == (1, 0)
            assert stats["reads"] == 0
    finally:
        drv.stop()
        cleanup_mounts(str(tmp_path))


# --- 1c. a disk tier's extent: passed through while checked, a flipped byte repaired ----------


TRUST = 12.0  # --extent-trust: the scrubber checks an extent again once its check is 6 s old


def extent_of(tier_path) -> str:
    [path] = [p for p in tier_files(tier_path) if is_extent(p)]
    return path


HOLDER = """
import hashlib, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print("opened", flush=True)
for _ in sys.stdin:
    print(hashlib.sha256(os.pread(fd, int(sys.argv[2]), 0)).hexdigest(), flush=True)
"""


class HeldInPod:
    """A file held open by a process in a private mount namespace of its own, as a container
    holds it; each `read` reads it whole through that one descriptor: the bytes' sha256."""

    def __init__(self, path: str, size: int):
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", sys.executable, "-c", HOLDER, path,
             str(size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "opened"

    def read(self) -> str:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.mark.skipif(not pyfuse3_has_passthrough(),
                    reason="stock pyfuse3 cannot ask for passthrough: `make setup` builds one")
@pytest.mark.parametrize("source_keeps_it", [True, False], ids=["repaired", "given-up"])
def test_a_byte_flipped_in_a_disk_extent_is_not_served_past_the_trust(tmp_path,
                                                                       source_keeps_it):
    """The kernel reads a disk extent unchecked (passthrough), so a flipped byte does reach a
    file held open, but only until the scrubber's next check, which comes before the
    extent's check is TRUST old: then the byte is rewritten from the source, or, the source
    having changed, the extent is cut to nothing (the open file ends early: no wrong byte)."""
    src, ssd = tmp_path / "dataset", tmp_path / "ssd"
    assert not in_memory(str(ssd)), "the tier must be on a disk for this test"
    files = {"model.bin": os.urandom(6 * MiB)}
    write_tree(src, files)
    drv = DriverProcess(str(tmp_path / "driver"), extra_args=(
        *tier_args(f"SSD:{ssd}:64Mi"), "--extent-trust", str(TRUST), "--scrub-rate", "1Gi")
    ).start()
    try:
        volume = create(drv, "pvc-disk-extent", {"source": f"local://{src}", "blockSize": "1Mi",
                                                 "metadataTTL": "0"})
        staging, targets = stage_and_publish(drv, tmp_path, volume)
        written = time.monotonic()  # the extent's check (its first write) comes after this
        assert_files(targets[0], files)  # cold: grows in one extent on the disk tier
        extent = extent_of(ssd)
        want = files["model.bin"]
        held = HeldInPod(os.path.join(targets[1], "model.bin"), len(want))  # passthrough
        try:
            flip_a_byte(extent, 3 * MiB + 7)
            if not source_keeps_it:
                (src / "model.bin").write_bytes(os.urandom(6 * MiB))  # a new version
            assert held.read() not in (sha(want), sha(b""))  # read unchecked: the bad byte
            while True:  # every read is the bad byte until the scrub; then never again
                got = held.read()
                if got in (sha(want), sha(b"")):
                    break
                assert time.monotonic() - written < TRUST, "served past the bound"
                time.sleep(0.1)
            assert got == sha(want if source_keeps_it else b"")
            for _ in range(5):
                assert held.read() == got
                time.sleep(0.2)
        finally:
            held.close()
        again = read_file(os.path.join(targets[0], "model.bin"))  # a fresh open
        assert again == (want if source_keeps_it else (src / "model.bin").read_bytes())
        unpublish_and_unstage(drv, volume, staging, targets)
        assert sum(s["passthrough_opens"] for s in unmounted_statistics(drv.log_path)) >= 1
        log = pathlib.Path(drv.log_path).read_text(errors="replace")
        assert ("scrub.repaired" in log, "scrub.extent_dropped" in log) == \
            (source_keeps_it, not source_keeps_it)
    finally:
        drv.stop()
        cleanup_mounts(str(tmp_path))


# --- 2 and 3. warm reads: a second volume, and after unstage + plugin restart -----------------


def http_dataset(root) -> dict[str, bytes]:
    files = {"weights/model.bin": os.urandom(6 * MiB + 5),
             "weights/shard/0.bin": os.urandom(3 * MiB),
             "config.json": b'{"layers": 32}\n'}
    write_tree(root, files)
    return files


HTTP_PARAMS = {"tiers": "MEM,SSD", "blockSize": "1Mi", "metadataTTL": "immutable"}


def test_second_volume_of_the_same_source_reads_from_the_cache(tmp_path):
    src = tmp_path / "site"
    files = http_dataset(src)
    mem, ssd = tmp_path / "mem", tmp_path / "ssd"
    with HttpSource(src) as http:
        drv = DriverProcess(str(tmp_path / "driver"), extra_args=tier_args(
            f"MEM:{mem}:4Mi", f"SSD:{ssd}:64Mi")).start()
        try:
            params = {"source": http.url, **HTTP_PARAMS}
            first = create(drv, "pvc-first", params)
            staging_a, targets_a = stage_and_publish(drv, tmp_path, first, targets=("pod-a",))
            assert_files(targets_a[0], files)
            assert http.data_gets(), "the first volume read the source"

            mark = http.mark()
            second = create(drv, "pvc-second", params)
            assert second.volume_id != first.volume_id
            staging_b, targets_b = stage_and_publish(drv, tmp_path, second, targets=("pod-b",))
            assert_files(targets_b[0], files)
            later = http.since(mark)
            assert [r for r in later if r.is_data] == [], "the second volume read file data"
            # An immutable dataset's metadata is not asked again either. Only opening the
            # dataset for the new volume probes the source's root (the engine opens a fresh
            # backend per OpenDataset, so rotated secrets take effect).
            assert {(r.method, r.path) for r in later} <= {("HEAD", "/")}, later

            unpublish_and_unstage(drv, second, staging_b, targets_b)
            unpublish_and_unstage(drv, first, staging_a, targets_a)
        finally:
            drv.stop()
            cleanup_mounts(str(tmp_path))


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_cached_blocks_survive_unstage_and_plugin_restart(tmp_path, stop):
    src = tmp_path / "site"
    files = http_dataset(src)
    mem, ssd = tmp_path / "mem", tmp_path / "ssd"
    workdir = str(tmp_path / "driver")
    args = tier_args(f"MEM:{mem}:4Mi", f"SSD:{ssd}:64Mi")
    with HttpSource(src) as http:
        drv = DriverProcess(workdir, extra_args=args).start()
        try:
            volume = create(drv, "pvc-warm", {"source": http.url, **HTTP_PARAMS})
            staging, targets = stage_and_publish(drv, tmp_path, volume, targets=("pod-a",))
            assert_files(targets[0], files)
            assert http.data_gets(), "the first stage read the source"
            unpublish_and_unstage(drv, volume, staging, targets)
            assert daemon_pids(volume.volume_id) == []
            if stop == "sigterm":
                drv.stop()
            else:
                drv.kill(signal.SIGKILL)

            drv = DriverProcess(workdir, extra_args=args).start()
            mark = http.mark()
            staging, targets = stage_and_publish(drv, tmp_path, volume, targets=("pod-a",))
            assert_files(targets[0], files)
            # The new engine knows no metadata yet (HEADs and index pages are expected), but
            # every block is found in the tiers.
            assert http.data_gets(mark) == [], "the restaged volume read file data again"
            unpublish_and_unstage(drv, volume, staging, targets)
        finally:
            drv.stop()
            cleanup_mounts(str(tmp_path))


# --- 4. a file replaced at the source --------------------------------------------------------


@pytest.fixture
def changing_file(tmp_path):
    """A volume (metadataTTL 1s) whose data.bin is replaced by `replace()`; yields a namespace."""
    src = tmp_path / "dataset"
    old, new = os.urandom(3 * MiB + 11), os.urandom(5 * MiB + 77)
    write_tree(src, {"data.bin": old})
    drv = DriverProcess(str(tmp_path / "driver"),
                        extra_args=tier_args(f"SSD:{tmp_path / 'ssd'}:64Mi")).start()

    def replace() -> None:
        staged = tmp_path / "data.bin.new"
        staged.write_bytes(new)
        os.replace(staged, src / "data.bin")  # same path, new file: atomic at the source

    try:
        volume = create(drv, "pvc-change", {"source": f"local://{src}", "metadataTTL": "1",
                                            "blockSize": "256Ki"})
        staging, [target] = stage_and_publish(drv, tmp_path, volume, targets=("pod-a",))
        yield types.SimpleNamespace(path=os.path.join(target, "data.bin"), old=old, new=new,
                                    replace=replace)
        unpublish_and_unstage(drv, volume, staging, [target])
    finally:
        drv.stop()
        cleanup_mounts(str(tmp_path))


def describe(data: bytes, old: bytes, new: bytes) -> str:
    if data == old:
        return "old"
    if data == new:
        return "new"
    return f"a mix: {len(data)} bytes, sha {sha(data)[:12]}"


def test_replaced_file_shows_whole_new_bytes_after_the_ttl(changing_file):
    f = changing_file
    seen = {"old": 0, "new": 0}
    bad: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        """Whole-file reads, one after another, while the source changes under them."""
        while not stop.is_set():
            try:
                result = describe(read_file(f.path), f.old, f.new)
            except OSError as e:
                result = f"error {e!r}"
            if result in seen:
                seen[result] += 1
            else:
                bad.append(result)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        wait_for(lambda: seen["old"] >= 4 or bad, what="the old content through the mount")
        f.replace()
        wait_for(lambda: seen["new"] >= 20 or bad, what="the new content after the TTL")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert bad == [], f"reads that were neither the old nor the new file: {bad[:5]}"
    assert os.stat(f.path).st_size == len(f.new)
    assert sha(read_file(f.path)) == sha(f.new)


def test_a_reader_that_opened_the_old_version_never_sees_new_bytes(changing_file):
    f = changing_file
    assert read_file(f.path) == f.old  # every block of the old version is cached now
    with open(f.path, "rb", buffering=0) as held:
        head = held.read(MiB)
        f.replace()
        wait_for(lambda: os.stat(f.path).st_size == len(f.new), what="the new size")
        assert describe(read_file(f.path), f.old, f.new) == "new"
        try:
            rest = held.read()
        except OSError:
            rest = None  # refusing to go on (ESTALE) is fine; mixing is not
    if rest is not None:
        assert describe(head + rest, f.old, f.new) == "old"


# --- 5. the engine dies while a file is being read -------------------------------------------


def test_reads_survive_the_engine_being_killed_and_restarted(tmp_path):
    src, ssd = tmp_path / "dataset", tmp_path / "ssd"
    big = os.urandom(24 * MiB)
    later = {f"later/{i}.bin": os.urandom(512 * 1024 + i) for i in range(8)}
    files = {"big.bin": big, "during.bin": os.urandom(2 * MiB + 1), **later}
    write_tree(src, files)
    workdir = str(tmp_path / "driver")
    args = tier_args(f"SSD:{ssd}:256Mi")
    drv = DriverProcess(workdir, extra_args=args).start()
    try:
        volume = create(drv, "pvc-outage", {"source": f"local://{src}", "blockSize": "256Ki",
                                            "metadataTTL": "immutable"})
        staging, [target] = stage_and_publish(drv, tmp_path, volume, targets=("pod-a",))
        [pid] = daemon_pids(volume.volume_id)
        paused, resume = threading.Event(), threading.Event()
        outcome: dict = {}

        def read_big() -> None:
            """Read a quarter, wait while the engine is killed, read on to the end."""
            try:
                chunks = []
                with open(os.path.join(target, "big.bin"), "rb", buffering=0) as f:
                    while True:
                        chunk = f.read(256 * 1024)
                        if not chunk:
                            break
                        chunks.append(chunk)
                        if len(chunks) == 24:  # 6 MiB in
                            paused.set()
                            resume.wait(60)
                outcome["data"] = b"".join(chunks)
            except BaseException as e:  # noqa: BLE001 - reported by the test thread
                outcome["error"] = e
            finally:
                paused.set()

        reader = threading.Thread(target=read_big, daemon=True)
        reader.start()
        assert paused.wait(60), "the reader did not get going"
        drv.kill(signal.SIGKILL)  # the node plugin, and the engine inside it, die
        resume.set()
        reader.join(120)
        assert not reader.is_alive(), "the read did not finish while the engine was down"
        assert "error" not in outcome, f"read failed during the outage: {outcome.get('error')!r}"
        assert sha(outcome["data"]) == sha(big)
        assert sha(read_file(os.path.join(target, "during.bin"))) == sha(files["during.bin"])
        with open(drv.log_path, errors="replace") as log:  # the daemon logs there too
            assert "engine.unreachable" in log.read(), "the daemon fell back to the source"

        drv = DriverProcess(workdir, extra_args=args).start()
        assert daemon_pids(volume.volume_id) == [pid]  # adopted, never restarted
        assert sha(read_file(os.path.join(target, "big.bin"))) == sha(big)
        # Once the engine answers again, fresh reads go through it and fill its tier.
        back = None
        for rel, data in later.items():
            assert sha(read_file(os.path.join(target, rel))) == sha(data), rel
            if block_hashes({rel: data}, 256 * 1024) <= cached_hashes(ssd,
                                                                      block_size=256 * 1024):
                back = rel
                break
            time.sleep(0.5)
        assert back is not None, "no read went through the restarted engine"
        assert_files(target, files)
        unpublish_and_unstage(drv, volume, staging, [target])
    finally:
        drv.stop()
        cleanup_mounts(str(tmp_path))


# --- 6. `eddy mount` with its own engine ----------------------------------------------------


def eddy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eddy.cli", *args], capture_output=True,
                          text=True, timeout=120)


def kill_daemon(pid: int, mountpoint: str) -> None:
    """SIGKILL a mount daemon this test started, if that pid is still it (teardown)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return
    if b"csi.fuse" in args and mountpoint.encode() in args:
        os.kill(pid, signal.SIGKILL)


def is_mounted(path) -> bool:
    return os.path.realpath(path) in mounts_under(str(path))


def test_eddy_mount_reuses_its_state_dir_and_refuses_a_second_user(tmp_path):
    src, mem, state = tmp_path / "dataset", tmp_path / "mem", tmp_path / "state"
    files = {"a.bin": os.urandom(3 * MiB + 3), "dir/b.txt": b"hello\n" * 100}
    write_tree(src, files)
    mnt, other = tmp_path / "mnt", tmp_path / "mnt2"
    mnt.mkdir()
    other.mkdir()
    mount_args = ("--state-dir", str(state), "--tier", f"MEM:{mem}:32Mi",
                  "--log-dir", str(tmp_path / "logs"), "--param", "blockSize=1Mi")
    pids: list[int] = []
    try:
        done = eddy("mount", f"local://{src}", str(mnt), *mount_args)
        assert done.returncode == 0, done.stderr
        pids.append(json.loads(done.stdout)["pid"])
        assert_files(mnt, files)
        want = block_hashes(files, MiB)
        assert cached_hashes(mem, block_size=MiB) == want, \
            "the mount read through its engine's MEM tier"
        wait_compacted(mem, files)  # before the unmount could cancel it
        first_files = sorted(tier_files(mem))

        done = eddy("umount", str(mnt))
        assert done.returncode == 0, done.stderr
        assert not is_mounted(mnt)

        done = eddy("mount", f"local://{src}", str(mnt), *mount_args)
        assert done.returncode == 0, done.stderr
        pids.append(json.loads(done.stdout)["pid"])
        assert_files(mnt, files)
        assert sorted(tier_files(mem)) == first_files, "the second mount found its blocks warm"

        refused = eddy("mount", f"local://{src}", str(other), *mount_args)
        assert refused.returncode != 0
        assert "--state-dir" in refused.stderr, refused.stderr
        assert not is_mounted(other)
        assert_files(mnt, files)  # the first mount is untouched

        done = eddy("umount", str(mnt))
        assert done.returncode == 0, done.stderr
        assert mounts_under(str(tmp_path)) == []
    finally:
        cleanup_mounts(str(tmp_path))
        for pid in pids:
            kill_daemon(pid, str(mnt))
