"""`make demo`: what eddy is for, on one machine, with no Kubernetes and no cloud account.

It plays every part of a cluster itself, for real:

  the object store   a SeaweedFS S3 server on 127.0.0.1 with a model (a ~1 GiB
                     model.safetensors-like file) and a tokenizer directory of small files
  the node           `eddy serve --mode all` with a MEM and an SSD tier
  the provisioner    CSI CreateVolume with the StorageClass's S3 parameters
  the kubelet        NodeStageVolume with the node-stage secret, NodePublishVolume per pod

then copies the model cold (every byte from S3), preloads the dataset with `eddy preload`,
starts a second "pod" (a fresh publish) and copies again, kills the volume's mount daemon
with SIGKILL while that pod reads (from its own mount namespace, as a container does) and
shows the read finishing with the right bytes, and prints the timings and `eddy status`.
Everything it starts is stopped and removed at the end, also on Ctrl-C or failure: no mount,
process or temp dir is left behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from eddy.base.pb import csi_pb2
from tests.support.driver import (
    AccessMode,
    DriverProcess,
    cleanup_mounts,
    daemon_pids,
    mount_capability,
)
from tests.support.node import Pod
from tests.support.s3server import S3Server

BUCKET = "models"
PREFIX = "llama-demo"
CHUNK = 1 << 20


def say(text: str) -> None:
    print(f"\033[1m==>\033[0m {text}" if sys.stdout.isatty() else f"==> {text}", flush=True)


def upload_dataset(s3: S3Server, model_bytes: int, small_files: int) -> dict[str, str]:
    """The model file plus `small_files` tokenizer shards; the sha256 of each, by path."""
    s3.create_bucket(BUCKET)
    chunk = os.urandom(64 << 20)
    model = (chunk * (-(-model_bytes // len(chunk))))[:model_bytes]
    s3.put(BUCKET, f"{PREFIX}/model.safetensors", model)
    s3.put(BUCKET, f"{PREFIX}/config.json", b'{"architectures": ["LlamaForCausalLM"]}\n')

    def put_small(i: int) -> tuple[str, str]:
        data = os.urandom(1024 + (i * 7919) % (15 * 1024))
        path = f"tokenizer/{i % 16:02d}/piece-{i:05d}.bin"
        s3.put(BUCKET, f"{PREFIX}/{path}", data)
        return path, hashlib.sha256(data).hexdigest()

    with ThreadPoolExecutor(8) as pool:
        hashes = dict(pool.map(put_small, range(small_files)))
    hashes["model.safetensors"] = hashlib.sha256(model).hexdigest()
    return hashes


def copy_seconds(path: str) -> float:
    """Copy a file to /dev/null the way `cp` would (1 MiB reads); seconds taken."""
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as src:
        while src.read(CHUNK):
            pass
    return time.perf_counter() - start


def read_tree_seconds(root: str) -> tuple[float, int]:
    """`find ROOT -type f | xargs cat > /dev/null`; (seconds, files)."""
    start = time.perf_counter()
    files = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                f.read()
            files += 1
    return time.perf_counter() - start, files


def drop_page_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


class Cluster:
    """The driver seen through CSI, as the external-provisioner and the kubelet see it."""

    def __init__(self, workdir: str, driver: DriverProcess):
        self.workdir = workdir
        self.driver = driver
        self.staged: dict[str, str] = {}
        self.published: list[tuple[str, str]] = []

    def create_volume(self, name: str, parameters: dict[str, str]) -> csi_pb2.Volume:
        return self.driver.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=name, volume_capabilities=[mount_capability()], parameters=parameters,
            capacity_range=csi_pb2.CapacityRange(required_bytes=4 << 30))).volume

    def stage(self, volume: csi_pb2.Volume, secrets: dict[str, str],
              mode=AccessMode.MULTI_NODE_READER_ONLY) -> None:
        staging = os.path.join(self.workdir, "kubelet", "staging", volume.volume_id)
        self.driver.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=staging,
            volume_capability=mount_capability(mode), volume_context=volume.volume_context,
            secrets=secrets))
        self.staged[volume.volume_id] = staging

    def publish(self, volume: csi_pb2.Volume, pod: str, name: str = "model",
                mode=AccessMode.MULTI_NODE_READER_ONLY) -> str:
        target = os.path.join(self.workdir, "kubelet", "pods", pod, "volumes", name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        self.driver.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=self.staged[volume.volume_id],
            target_path=target, volume_capability=mount_capability(mode),
            readonly=mode == AccessMode.MULTI_NODE_READER_ONLY,
            volume_context=volume.volume_context))
        self.published.append((volume.volume_id, target))
        return target

    def unpublish(self, volume_id: str, target: str) -> None:
        self.driver.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=volume_id, target_path=target))
        self.published.remove((volume_id, target))

    def teardown(self) -> None:
        for volume_id, target in list(self.published):
            self.unpublish(volume_id, target)
        for volume_id, staging in list(self.staged.items()):
            self.driver.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
                volume_id=volume_id, staging_target_path=staging))
            self.driver.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(
                volume_id=volume_id))
            del self.staged[volume_id]


def eddy_cli(*args: str) -> int:
    return subprocess.run([sys.executable, "-m", "eddy.cli", *args]).returncode


def run(workdir: str, memdir: str, model_bytes: int, small_files: int) -> int:
    say(f"starting a local S3 server and uploading the dataset "
        f"({model_bytes / 2**30:.2f} GiB model + {small_files} small files)")
    with S3Server() as s3:
        hashes = upload_dataset(s3, model_bytes, small_files)
        mem = os.path.join(memdir, "tier-mem")
        ssd = os.path.join(workdir, "tier-ssd")
        tiers = ("--tier", f"MEM:{mem}:{model_bytes + (512 << 20)}",
                 "--tier", f"SSD:{ssd}:{2 * model_bytes + (1 << 30)}")
        say("starting eddy serve --mode all with a MEM and an SSD tier")
        driver = DriverProcess(os.path.join(workdir, "driver"), extra_args=tiers).start()
        cluster = Cluster(workdir, driver)
        try:
            return _scenario(cluster, s3, driver, hashes)
        finally:
            say("cleaning up")
            try:
                cluster.teardown()
            finally:
                driver.stop()
                cleanup_mounts(workdir)


def _scenario(cluster: Cluster, s3: S3Server, driver: DriverProcess,
              hashes: dict[str, str]) -> int:
    endpoint = driver.engine_endpoint
    volume = cluster.create_volume("pvc-llama", {
        "source": f"s3://{BUCKET}/{PREFIX}", "endpoint": s3.endpoint, "region": "us-east-1",
        "metadataTTL": "immutable"})
    say(f"CreateVolume -> {volume.volume_id}; NodeStageVolume with the S3 secret")
    cluster.stage(volume, s3.secrets)
    pod_a = cluster.publish(volume, "pod-a")
    model = os.path.join(pod_a, "model.safetensors")
    size = os.path.getsize(model)

    say("pod-a copies model.safetensors cold: every block comes from S3")
    cold = copy_seconds(model)
    cold_small, nfiles = read_tree_seconds(os.path.join(pod_a, "tokenizer"))

    say("eddy preload --wait: load the rest of the dataset into the tiers")
    if eddy_cli("preload", "--endpoint", endpoint, "--volume-id", volume.volume_id,
                "--wait") != 0:
        return 1
    cluster.unpublish(volume.volume_id, pod_a)
    dropped = drop_page_cache()
    say("pod-b starts on the same node (a fresh publish) and copies the model "
        + ("with the kernel page cache dropped: every block comes from the MEM tier"
           if dropped else "(could not drop the page cache: not root?)"))
    pod_b = cluster.publish(volume, "pod-b")
    warm = copy_seconds(os.path.join(pod_b, "model.safetensors"))
    warm_small, _ = read_tree_seconds(os.path.join(pod_b, "tokenizer"))
    hot = copy_seconds(os.path.join(pod_b, "model.safetensors"))
    survived = _kill_the_daemon_while_pod_b_reads(volume.volume_id, pod_b, hashes)

    mb = size / 1e6
    print()
    print(f"  model.safetensors ({size / 2**30:.2f} GiB)")
    print(f"    cold copy from S3               {cold:7.2f} s  {mb / cold:8.0f} MB/s")
    print(f"    warm copy, new pod, MEM tier    {warm:7.2f} s  {mb / warm:8.0f} MB/s"
          f"   {cold / warm:5.1f}x faster")
    print(f"    again in the same pod           {hot:7.2f} s  {mb / hot:8.0f} MB/s"
          f"   {cold / hot:5.1f}x faster (kernel page cache)")
    print(f"  tokenizer/ ({nfiles} small files, find + cat)")
    print(f"    cold                            {cold_small:7.2f} s")
    print(f"    warm, new pod                   {warm_small:7.2f} s"
          f"   {cold_small / warm_small:5.1f}x faster")
    print(survived)
    print(_write_a_result(cluster, s3))
    print()
    say("eddy status")
    eddy_cli("status", "--endpoint", endpoint, "--wide")
    return 0


def _write_a_result(cluster: Cluster, s3: S3Server) -> str:
    """pod-b writes a small file into a ReadWriteOnce volume of the bucket; where it lands."""
    say("pod-b writes results/metrics.json into a ReadWriteOnce volume of the same bucket")
    writer = AccessMode.SINGLE_NODE_WRITER
    volume = cluster.create_volume("pvc-results", {
        "source": f"s3://{BUCKET}/results", "endpoint": s3.endpoint, "region": "us-east-1"})
    cluster.stage(volume, s3.secrets, writer)
    target = cluster.publish(volume, "pod-b", "results", writer)
    data = json.dumps({"model": "llama", "eval_loss": 1.234}).encode()
    with open(os.path.join(target, "metrics.json"), "wb") as f:
        f.write(data)  # uploaded when it is closed
    stored = s3.get(BUCKET, "results/metrics.json")
    ok = "in the bucket, same bytes" if stored == data else "NOT IN THE BUCKET"
    return f"  pod-b wrote metrics.json ({len(data)} bytes) through the mount: " \
           f"s3://{BUCKET}/results/metrics.json {ok}"


def _kill_the_daemon_while_pod_b_reads(volume_id: str, pod: str, hashes: dict[str, str]) -> str:
    """kill -9 of the mount daemon in the middle of pod-b's read; what the pod saw."""
    say("pod-b reads the model and opens tokenizer files, from its own mount namespace as a "
        "container does; the volume's mount daemon is killed with SIGKILL in the middle")
    drop_page_cache()
    paths = {os.path.join(pod, rel): h for rel, h in hashes.items()}
    others = sorted(p for p in paths if "/tokenizer/" in p)[:400]
    model = os.path.join(pod, "model.safetensors")
    reader = Pod({"hold": model, "others": others, "rate": 300 << 20, "every": 2,
                  "sha256": {p: paths[p] for p in [model, *others]}})
    try:
        reader.wait_at(min(256 << 20, os.path.getsize(model) // 4))
        [old] = daemon_pids(volume_id)
        os.kill(old, signal.SIGKILL)
        result = reader.finish(300)
    finally:
        reader.kill()
    new = daemon_pids(volume_id)
    ok = not result["failure_count"] and not result["mismatches"]
    return (f"  kill -9 of the mount daemon (pid {old}) while pod-b read: "
            f"{'sha256 right' if ok else 'WRONG OR FAILED READS'}, "
            f"{result['failure_count']} failed reads, {result['path_reads']} files opened by "
            f"path, longest read() {result['worst_wait']:.2f} s; pid {', '.join(map(str, new))}"
            " now serves the same mount")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-size", type=int, default=1 << 30, help="bytes (default: 1 GiB)")
    p.add_argument("--small-files", type=int, default=3000)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("make demo needs root (FUSE mounts, bind mounts)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up as on Ctrl-C
    workdir = tempfile.mkdtemp(prefix="eddy-demo-", dir="/var/tmp")  # on disk: the SSD tier
    memdir = tempfile.mkdtemp(prefix="eddy-demo-", dir="/dev/shm")  # tmpfs: the MEM tier
    try:
        return run(workdir, memdir, args.model_size, args.small_files)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        cleanup_mounts(workdir)
        for d in (workdir, memdir):
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
