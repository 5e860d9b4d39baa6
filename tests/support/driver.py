"""Run the real `eddy serve` as a subprocess on a unix socket and talk CSI to it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import grpc

from eddy.base.mounttable import mount_table
from eddy.base.pb import cache_pb2_grpc, csi_pb2, csi_pb2_grpc

AccessMode = csi_pb2.VolumeCapability.AccessMode


def mount_capability(mode=AccessMode.MULTI_NODE_READER_ONLY) -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode))


class DriverProcess:
    """`eddy serve --mode MODE` in a temp dir; `.identity`, `.controller`, `.node` stubs."""

    def __init__(self, workdir: str, mode: str = "all", node_id: str = "test-node",
                 extra_args: tuple[str, ...] = (), prefix: tuple[str, ...] = (),
                 kubelet_dir: str | None = None):
        self.workdir = workdir
        # The test's own directory plays kubelet's root: staging and target paths live in it.
        self.kubelet_dir = kubelet_dir or os.path.dirname(os.path.abspath(workdir))
        self.socket = os.path.join(workdir, "csi.sock")
        self.state_dir = os.path.join(workdir, "state")
        self.log_path = os.path.join(workdir, "driver.log")
        self.args = [*prefix, sys.executable, "-m", "eddy.cli", "--log-level", "debug", "serve",
                     "--mode", mode, "--endpoint", f"unix://{self.socket}",
                     "--node-id", node_id, "--state-dir", self.state_dir,
                     "--kubelet-dir", self.kubelet_dir, *extra_args]
        self.proc: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None

    @property
    def engine_endpoint(self) -> str:
        """The engine's own socket, which `eddy status` and `eddy preload` talk to."""
        return f"unix://{os.path.join(self.state_dir, 'engine.sock')}"

    def engine_stub(self) -> cache_pb2_grpc.CacheEngineStub:
        """The node plugin's engine API, on its own socket (the CSI socket serves only CSI)."""
        return cache_pb2_grpc.CacheEngineStub(grpc.insecure_channel(self.engine_endpoint))

    def start(self, timeout: float = 30.0) -> DriverProcess:
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.args, stdout=logf, stderr=logf)
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"eddy serve exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.identity.Probe(csi_pb2.ProbeRequest(), timeout=1).ready.value:
                    return self
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"eddy serve did not answer Probe:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-5000:]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the driver process only (its mount daemons live on, as in a real restart)."""
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def __enter__(self) -> DriverProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def mounts_under(path: str) -> list[str]:
    path = os.path.realpath(path)
    return [m.mount_point for m in mount_table()
            if m.mount_point == path or m.mount_point.startswith(path + "/")]


def daemon_pids(volume_id: str) -> list[int]:
    """Pids of mount daemons serving `volume_id` (from /proc, whatever their parent)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        name = volume_id.encode()
        if b"csi.fuse" in args and (name in args or b"--volume-id=" + name in args):
            pids.append(int(entry))
    return pids


def cleanup_mounts(path: str) -> None:
    """Lazily unmount everything under `path`, deepest first (test teardown)."""
    for mp in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def create(driver, name, parameters):
    """CreateVolume as the external-provisioner sends it; the new volume."""
    return driver.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=name, volume_capabilities=[mount_capability()], parameters=parameters,
        capacity_range=csi_pb2.CapacityRange(required_bytes=1 << 30))).volume


def unpublish_and_unstage(driver, volume, staging, targets) -> None:
    for target in targets:
        driver.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=volume.volume_id, target_path=target))
    driver.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=staging))


def tier_args(*tiers: str) -> tuple[str, ...]:
    return tuple(arg for tier in tiers for arg in ("--tier", tier))


def stage_and_publish(driver, tmp_path, volume, secrets=None, targets=("pod-a", "pod-b"),
                      mode=AccessMode.MULTI_NODE_READER_ONLY, writers=()):
    """Stage `volume` with access `mode` and publish it to each of `targets` (read-only, but
    read-write to the pods named in `writers`); (staging path, target paths)."""
    staging = str(tmp_path / "kubelet" / "staging" / volume.volume_id)
    req = csi_pb2.NodeStageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=staging,
        volume_capability=mount_capability(mode), volume_context=volume.volume_context,
        secrets=secrets or {})
    driver.node.NodeStageVolume(req)
    driver.node.NodeStageVolume(req)  # idempotent
    paths = []
    for pod in targets:
        target = str(tmp_path / "kubelet" / "pods" / pod / "mount")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        preq = csi_pb2.NodePublishVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=staging, target_path=target,
            volume_capability=mount_capability(mode), readonly=pod not in writers,
            volume_context=volume.volume_context)
        driver.node.NodePublishVolume(preq)
        driver.node.NodePublishVolume(preq)  # idempotent
        paths.append(target)
    return staging, paths


def errno_of(call, *args) -> int:
    """The errno `call(*args)` fails with; AssertionError if it does not fail."""
    try:
        call(*args)
    except OSError as e:
        return e.errno
    raise AssertionError(f"{call.__name__}{args} did not fail")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def teardown_volume(driver, volume, staging, targets) -> None:
    for target in targets:
        req = csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume.volume_id, target_path=target)
        driver.node.NodeUnpublishVolume(req)
        driver.node.NodeUnpublishVolume(req)  # already undone: still OK
        assert not os.path.exists(target)
    req = csi_pb2.NodeUnstageVolumeRequest(volume_id=volume.volume_id,
                                           staging_target_path=staging)
    driver.node.NodeUnstageVolume(req)
    driver.node.NodeUnstageVolume(req)
    dreq = csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id)
    driver.controller.DeleteVolume(dreq)
    driver.controller.DeleteVolume(dreq)
