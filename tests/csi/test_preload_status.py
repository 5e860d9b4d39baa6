"""Preload, status, volume stats and metrics of a real node plugin, over a counting HTTP source.

Every byte of file data the source serves is a recorded GET, so "no source request" and
"nothing fetched twice" are counted at the source, not taken from the engine's word.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request

import grpc
import pytest

from eddy.base.pb import cache_pb2, csi_pb2
from tests.support.driver import (
    DriverProcess,
    cleanup_mounts,
    create,
    mount_capability,
    mounts_under,
    stage_and_publish,
    teardown_volume,
    unpublish_and_unstage,
)
from tests.support.http_source import HttpSource
from tests.support.tiers import tier_bytes
from tests.support.wait import wait_for

KI = 1 << 10
MI = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_files(root, sizes: dict[str, int]) -> dict[str, bytes]:
    files = {}
    for rel, size in sizes.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        files[rel] = os.urandom(size)
        path.write_bytes(files[rel])
    return files


def eddy(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "eddy.cli", *args], capture_output=True,
                          text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"eddy {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


def read_all(root: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        with open(os.path.join(root, rel), "rb") as f:
            assert f.read() == data, rel


@pytest.fixture
def node(tmp_path):
    """A driver with MEM 2Mi + SSD 16Mi tiers and metrics on a loopback port."""
    port = free_port()
    tiers = ("--tier", f"MEM:{tmp_path}/mem:2Mi", "--tier", f"SSD:{tmp_path}/ssd:16Mi")
    drv = DriverProcess(str(tmp_path / "driver"), extra_args=(
        *tiers, "--metrics-port", str(port), "--metrics-address", "127.0.0.1"))
    drv.metrics_port = port
    drv.start()
    yield drv
    drv.stop()
    cleanup_mounts(str(tmp_path))


def test_preload_then_every_read_is_a_hit_and_status_matches_the_tiers(node, tmp_path):
    files = make_files(tmp_path / "src", {"weights/model.bin": 3 * MI + 5, "config.json": 300,
                                          "tok/vocab.txt": 70 * KI})
    total = sum(map(len, files.values()))
    with HttpSource(tmp_path / "src") as http:
        volume = create(node, "pvc-preload", {"source": http.url, "metadataTTL": "immutable",
                                              "blockSize": "256Ki", "preload": "true"})
        staging, targets = stage_and_publish(node, tmp_path, volume, targets=("pod-a",))
        out = eddy("preload", "--endpoint", node.engine_endpoint, "--volume-id",
                   volume.volume_id, "--wait", "--json")
        last = json.loads(out.stdout.splitlines()[-1])
        assert last["state"] == "Complete" and last["bytes_cached"] == total
        before = scrape(node.metrics_port)

        mark = http.mark()
        read_all(targets[0], files)
        assert http.data_gets(mark) == []  # every block came from a tier

        # A file read whole may be compacting into an extent: both copies exist meanwhile.
        wait_for(lambda: tier_bytes(tmp_path / "mem") + tier_bytes(tmp_path / "ssd") == total,
                 what="every block stored once")
        [row] = json.loads(eddy("status", "--endpoint", node.engine_endpoint,
                                "--json").stdout)
        in_tiers = {"MEM": tier_bytes(tmp_path / "mem"), "SSD": tier_bytes(tmp_path / "ssd")}
        assert row["volumes"] == [volume.volume_id] and row["phase"] == "Ready"
        assert row["ufs_total_bytes"] == total == row["cached_bytes"] == sum(in_tiers.values())
        assert row["tier_bytes"] == in_tiers and row["cached_percentage"] == 100.0
        assert row["hit_ratio"] is not None and row["hits"] > 0

        after = scrape(node.metrics_port)
        assert after["eddy_cache_hits_total"] > before["eddy_cache_hits_total"]
        assert after["eddy_source_bytes_total"] == total  # each block fetched once
        assert after['eddy_tier_used_bytes{tier="MEM"}'] == in_tiers["MEM"]
        assert after[f'eddy_preload_running{{dataset="{row["dataset_id"]}"}}'] == 0
        assert after["eddy_block_fetch_seconds_count"] >= -(-total // (256 * KI))

        stats = node.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
            volume_id=volume.volume_id, volume_path=targets[0]))
        [usage] = stats.usage
        assert usage.used == total and usage.total == row["cache_capacity_bytes"]
        assert not stats.volume_condition.abnormal
        table = eddy("status", "--endpoint", node.engine_endpoint, "--wide").stdout
        assert "CACHED PERCENTAGE" in table and "100.0%" in table and volume.volume_id in table
        teardown_volume(node, volume, staging, targets)
    assert mounts_under(str(tmp_path)) == []


def test_a_preload_larger_than_the_capacity_ends_capacity_reached(node, tmp_path):
    make_files(tmp_path / "src", {f"shard-{i}.bin": MI for i in range(3)})
    with HttpSource(tmp_path / "src") as http:
        volume = node.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
            name="pvc-small", volume_capabilities=[mount_capability()],
            parameters={"source": http.url, "blockSize": "64Ki", "cacheCapacity": "1Mi"},
            capacity_range=csi_pb2.CapacityRange(required_bytes=MI))).volume
        staging, targets = stage_and_publish(node, tmp_path, volume, targets=("pod-a",))
        out = eddy("preload", "--endpoint", node.engine_endpoint, "--wait", "--json",
                   check=False)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "CapacityReached" in out.stderr
        last = json.loads(out.stdout.splitlines()[-1])
        assert last["state"] == "CapacityReached"
        stored = tier_bytes(tmp_path / "mem") + tier_bytes(tmp_path / "ssd")
        assert last["bytes_cached"] == stored
        assert 0 < stored <= MI
        [row] = json.loads(eddy("status", "--endpoint", node.engine_endpoint,
                                "--json").stdout)
        assert row["phase"] == "CapacityReached" and row["cached_bytes"] == stored
        assert row["cached_percentage"] == pytest.approx(100 * stored / (3 * MI), abs=0.01)
        teardown_volume(node, volume, staging, targets)


def test_volumes_of_one_dataset_keep_their_own_capacity_until_unstaged(node, tmp_path):
    """A small volume staged after a big one of the same source does not shrink its cache;
    once the big one is unstaged, the small one's capacity applies (README "Volumes that share
    a dataset")."""
    files = make_files(tmp_path / "src", {f"shard-{i}.bin": MI for i in range(3)})
    params = {"source": f"local://{tmp_path / 'src'}", "blockSize": "256Ki"}

    def claim(name: str, size: int) -> csi_pb2.Volume:
        return node.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=name, volume_capabilities=[mount_capability()],
            parameters={**params, "cacheCapacity": str(size)},
            capacity_range=csi_pb2.CapacityRange(required_bytes=size))).volume

    big, small = claim("pvc-big", 2 * MI), claim("pvc-small", MI)
    big_staging, big_targets = stage_and_publish(node, tmp_path, big, targets=("pod-a",))
    small_staging, small_targets = stage_and_publish(node, tmp_path, small, targets=("pod-b",))
    read_all(big_targets[0], files)

    def row() -> dict:
        [only] = json.loads(eddy("status", "--endpoint", node.engine_endpoint,
                                 "--json").stdout)
        return only

    shared = row()
    assert shared["volumes"] == sorted([big.volume_id, small.volume_id])
    assert shared["cache_capacity_bytes"] == 2 * MI and shared["cached_bytes"] == 2 * MI
    teardown_volume(node, big, big_staging, big_targets)
    alone = row()
    assert alone["volumes"] == [small.volume_id] and alone["cache_capacity_bytes"] == MI
    # At once, or at the next maintenance round for blocks a reader was handed just now.
    wait_for(lambda: row()["cached_bytes"] <= MI, 30, "the cache to shrink to 1 MiB")
    read_all(small_targets[0], files)
    assert row()["cached_bytes"] <= MI
    teardown_volume(node, small, small_staging, small_targets)


def test_a_preload_interrupted_by_an_engine_kill_resumes_without_refetching(tmp_path):
    files = make_files(tmp_path / "src", {f"part-{i:02d}.bin": 2 * MI for i in range(8)})
    total = sum(map(len, files.values()))
    workdir = str(tmp_path / "driver")
    args = ("--tier", f"SSD:{tmp_path}/ssd:64Mi")
    drv = DriverProcess(workdir, extra_args=args).start()
    try:
        with HttpSource(tmp_path / "src") as http:
            volume = create(drv, "pvc-resume", {"source": http.url, "blockSize": "64Ki",
                                                "metadataTTL": "immutable"})
            staging, targets = stage_and_publish(drv, tmp_path, volume, targets=("pod-a",))
            drv.engine_stub().Preload(cache_pb2.PreloadRequest(workers=1), timeout=30)
            wait_for(lambda: len(http.data_gets()) >= 40, 60, "the preload part of the way")
            drv.kill()  # the engine dies with the node plugin, mid-job
            drv = DriverProcess(workdir, extra_args=args).start()
            first_run = {(r.path, r.range) for r in http.data_gets()}
            out = eddy("preload", "--endpoint", drv.engine_endpoint, "--wait", "--json")
            last = json.loads(out.stdout.splitlines()[-1])
            assert last["state"] == "Complete" and last["bytes_cached"] == total
            gets = [(r.path, r.range) for r in http.data_gets()]
            # Only the block being loaded when the engine died may be fetched again.
            assert len(gets) - len(set(gets)) <= 1, "blocks were fetched from the source twice"
            assert last["blocks_skipped"] >= len(first_run) - 1
            assert tier_bytes(tmp_path / "ssd") == total
            read_all(targets[0], files)
            teardown_volume(drv, volume, staging, targets)
    finally:
        drv.stop()
        cleanup_mounts(str(tmp_path))


@pytest.mark.expect_error_log("startup failed")
def test_a_signed_urls_query_is_never_shown(node, tmp_path):
    """The query of a presigned URL is used, and appears in no log line, error, status or
    metric: the driver's log (which the mounter's daemons write to as well), a failed stage's
    message, `eddy status` plain, --wide and --json, and /metrics."""
    marker = "SECRETMARKER123"
    files = make_files(tmp_path / "src", {"model.bin": 300 * KI})
    with HttpSource(tmp_path / "src") as http:
        signed = f"{http.url}model.bin?X-Amz-Signature={marker}&X-Amz-Credential=AKIA"
        volume = create(node, "pvc-signed", {"source": signed})
        assert volume.volume_context["source"] == signed  # the real URL is what is used
        staging, targets = stage_and_publish(node, tmp_path, volume, targets=("pod-a",))
        read_all(targets[0], files)
        assert any(marker in r.path for r in http.requests)

        gone = create(node, "pvc-gone", {"source": f"{http.url}gone.bin?X-Amz-Signature={marker}"})
        with pytest.raises(grpc.RpcError) as info:
            stage_and_publish(node, tmp_path, gone, targets=())
        assert "gone.bin?…" in info.value.details() and marker not in info.value.details()

        where = ("--endpoint", node.engine_endpoint)
        shown = [eddy("status", *where, *extra).stdout
                 for extra in ((), ("--wide",), ("--json",))]
        [row] = json.loads(shown[2])
        assert row["source"] == f"{http.url}model.bin?…"
        assert f"{http.url}model.bin?…" in shown[1]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics",
                                         timeout=10).read().decode()
        unpublish_and_unstage(node, volume, staging, targets)
    for text in (*shown, metrics, node.log()):
        assert marker not in text
    assert "model.bin?…" in node.log()
