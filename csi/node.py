"""CSI Node service: stage a volume as one FUSE mount, publish it by bind mounts.

NodeStageVolume asks the mounter (csi/mounter/) to mount the volume's FUSE connection at the
staging path and start its daemon, and returns once the mount answers; NodePublishVolume
bind-mounts the staging path onto each pod's target (read-only when asked). Every call is
idempotent as the spec says, and a second call on a volume that is in flight gets ABORTED.
The mounter keeps each connection alive across deaths of its daemon; twice a second this
service asks it how its mounts are, binds the targets again where it had to mount a volume
anew, and stages again a volume the mounter does not know (its records were lost).
An inline ephemeral volume (kubelet publishes it without staging) is staged by its first
NodePublishVolume, if the node's allowlist admits its source, and unstaged by its last
NodeUnpublishVolume (csi/ephemeral.py).
"""

from __future__ import annotations

import os
import re
import threading

from cache_engine.spec import DatasetSpec, check_limits, parse_parameters, parse_secrets
from cache_engine.ufs import SAME_ORIGIN, RedirectPolicy
from eddy.base import log
from eddy.base.errors import (
    Aborted,
    AlreadyExists,
    EddyError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from eddy.base.pb import csi_pb2, csi_pb2_grpc
from eddy.base.rpc import Servicer

from . import daemons, mounts, validate
from .ephemeral import EphemeralPolicy, is_ephemeral
from .fuse import device
from .inflight import InFlight
from .mount_health import MountHealth
from .mounter.mounter import Mounter
from .mounter.service import MounterClient
from .nfs import NfsMounts
from .state.secrets import DEFAULT_SECRETS_DIR
from .state.staging import StagedVolume, StagingRecords
from .volume_cache import VolumeCache

AccessMode = csi_pb2.VolumeCapability.AccessMode
READER_ONLY = {AccessMode.SINGLE_NODE_READER_ONLY, AccessMode.MULTI_NODE_READER_ONLY}
NodeCap = csi_pb2.NodeServiceCapability.RPC
KUBELET_DIR = "/var/lib/kubelet"
WATCH_INTERVAL = 0.5  # seconds between looks at the mounter's mounts


class NodeService(Servicer, csi_pb2_grpc.NodeServicer):
    """CSI Node: stage a volume as one FUSE mount (through the mounter), publish it by bind mounts,
    report its stats and condition.

    Owns the node's staging records and a watcher thread that binds targets again over a volume
    mounted anew and stages again what the mounter lost. `csi.server.Driver` creates it for the
    node modes; tests create it directly with fakes for the mounter and the cache."""

    def __init__(self, node_id: str, state_dir: str, max_volumes: int = 0,
                 log_level: str = "info", mounter: Mounter | MounterClient | None = None,
                 engine_endpoint: str | None = None, tier_names: tuple[str, ...] = (),
                 cache: VolumeCache | None = None, ephemeral: EphemeralPolicy | None = None,
                 nfs: NfsMounts | None = None, watch_interval: float = WATCH_INTERVAL,
                 secrets_dir: str = DEFAULT_SECRETS_DIR, kubelet_dir: str = KUBELET_DIR,
                 redirects: RedirectPolicy = SAME_ORIGIN, local_allow: tuple[str, ...] = ()):
        self.node_id = node_id
        self.kubelet_dir = kubelet_dir  # every staging and target path the CO names is beneath
        self.local_allow = tuple(local_allow)  # where local:// sources may be (empty: anywhere)
        # Without a mounter process of its own, the node runs one here (`eddy serve` alone).
        self.mounter = mounter or Mounter(os.path.join(state_dir, "mounter"), others_hold=False,
                                          secrets_dir=secrets_dir)
        self.engine_endpoint = engine_endpoint  # the node's cache engine, for mount daemons
        self.redirects = redirects  # also for daemons reading directly
        self.tier_names = tuple(tier_names)
        self.cache = cache  # the same engine, in this process: preload, usage
        self.max_volumes = max_volumes
        self._log_level = log_level
        self._records = StagingRecords(state_dir, secrets_dir)
        self.ephemeral = ephemeral or EphemeralPolicy()  # default: no inline volumes at all
        self._ephemeral_dir = os.path.join(os.path.abspath(state_dir), "ephemeral")
        self._nfs = nfs or NfsMounts(state_dir)
        self._inflight = InFlight()
        self._lock = threading.Lock()
        self._volumes: dict[str, StagedVolume] = {}
        self.health = MountHealth(self.mounter)
        self._watch_interval = watch_interval
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="node-watch", daemon=True)
        self._log = log.get("csi.node")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Take up the volumes staged before a restart, then watch their mounts. Nothing here
        may stop the plugin: an unreadable record is moved aside, an export that cannot be
        mounted is its volume's problem alone; both show in NodeGetVolumeStats."""
        volumes, problems = self._records.load_all()
        for problem in problems:
            self._log.error("staging_record.unreadable", problem=problem)
        for vol in volumes:
            self._volumes[vol.volume_id] = vol
            try:
                self._nfs.ensure(vol.parameters)
            except (EddyError, OSError) as e:
                self.health.problem(vol.volume_id, f"cannot mount its NFS export: {e}")
        self.mounter.start()
        self._watcher.start()

    def close(self) -> None:
        """Stop watching; the mounts and their daemons keep serving across a plugin restart."""
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join()
        self.mounter.close()

    def _config(self, vol: StagedVolume, secrets: dict | None = None) -> daemons.DaemonConfig:
        return daemons.DaemonConfig(vol.volume_id, vol.staging_path, vol.parameters,
                                    secrets if secrets is not None else
                                    self._records.secrets(vol.volume_id), self._log_level,
                                    engine={"endpoint": self.engine_endpoint,
                                            "redirect_allow": self.redirects.flags()}
                                    if self.engine_endpoint else {}, writable=vol.writable)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                self._log.exception("watch failed")
            self._stop.wait(self._watch_interval)

    def _sync(self) -> None:
        """Bring every staged volume in line with what the mounter says of its mount."""
        if not self.health.refresh():
            return
        with self._lock:
            volumes = list(self._volumes.values())
        for vol in volumes:
            try:
                with self._inflight.hold(vol.volume_id):
                    if self._volumes.get(vol.volume_id) is vol:
                        self._reconcile(vol)
            except Aborted:
                continue  # a CSI call on it is running: next round
            except (EddyError, OSError) as e:
                self.health.problem(vol.volume_id, str(e))

    def _reconcile(self, vol: StagedVolume) -> None:
        """Stage again what the mounter lost; bind the targets again over a new mount."""
        state = self.health.state(vol.volume_id)
        if state is None:
            self._log.warning("volume.restaging", volume_id=vol.volume_id,
                              reason="the mounter does not know it")
            self._nfs.ensure(vol.parameters)
            state = self.mounter.stage(self._config(vol))
            self.health.staged(state)
        if state.device and state.device != vol.device:
            for target, read_only in vol.targets.items():
                mounts.unmount_all(target)
                mounts.bind_mount(vol.staging_path, target, read_only)
            if vol.device and vol.targets:
                self._log.warning("targets.rebound", volume_id=vol.volume_id,
                                  targets=sorted(vol.targets), device=state.device)
            vol.device, vol.pid = state.device, state.pid
            self._records.save(vol)
        self.health.problem(vol.volume_id, None)

    # -- staging -------------------------------------------------------------------------------

    def NodeStageVolume(self, request):
        validate.volume_id(request)
        path = validate.path(request, "staging_target_path", self.kubelet_dir)
        validate.capability(request)
        spec = self._dataset(dict(request.volume_context))
        secrets = parse_secrets(dict(request.secrets))
        writable = validate.writable(request.volume_capability, request.volume_context)
        with self._inflight.hold(request.volume_id):
            self._stage(request.volume_id, path, spec, secrets, writable=writable)
        return csi_pb2.NodeStageVolumeResponse()

    def _dataset(self, volume_context: dict[str, str], inline: bool = False) -> DatasetSpec:
        """The volume's dataset as this node serves it (on its tiers, from its local
        directories, nfs:// as its mount under the state dir); inline ones pass its policy."""
        spec = parse_parameters(volume_context)
        validate.local_source(spec, self.local_allow)
        if inline:
            spec = self.ephemeral.admit(spec)
        elif spec.source.scheme == "pvc":
            raise InvalidArgument(f"source {spec.source.uri}: pvc:// sources are resolved by "
                                  "the controller at CreateVolume; this volume was not")
        validate.node_tiers(spec, self.node_id, self.tier_names)
        return self._nfs.local_spec(spec)

    def _stage(self, volume_id: str, path: str, spec: DatasetSpec, secrets: dict[str, str],
               inline: bool = False, writable: bool = False) -> StagedVolume:
        """Mount the volume at `path` with its daemon (idempotent); the caller holds its id."""
        vol = self._volumes.get(volume_id)
        if vol is not None:
            if (vol.staging_path, vol.parameters, vol.writable) != (
                    path, spec.to_parameters(), writable):
                raise AlreadyExists(f"volume {volume_id} is already staged at "
                                    f"{vol.staging_path} with other parameters")
            return vol
        if self.max_volumes and len(self._volumes) >= self.max_volumes:
            raise ResourceExhausted(f"node {self.node_id} already holds "
                                    f"{self.max_volumes} volumes")
        vol = StagedVolume(volume_id, path, spec.to_parameters(), ephemeral=inline,
                           writable=writable)
        self._nfs.ensure(vol.parameters)
        try:
            state = self.mounter.stage(self._config(vol, secrets))
        except BaseException:
            self._nfs.release(vol.parameters, self._others(vol))
            raise
        vol.pid, vol.device = state.pid, state.device
        self.health.staged(state)
        self._records.save(vol, secrets)
        with self._lock:
            self._volumes[vol.volume_id] = vol
        if self.cache is not None:
            self.cache.start_preload(vol, secrets)
        return vol

    def _unstage(self, vol: StagedVolume) -> None:
        """Unmount the volume, stop its daemon and forget it; the caller holds its id."""
        self.mounter.unstage(vol.volume_id)
        mounts.unmount_all(vol.staging_path)
        self._records.remove(vol.volume_id)
        self.health.unstaged(vol.volume_id)
        if self.cache is not None:
            self.cache.forget(vol.volume_id)
        with self._lock:
            del self._volumes[vol.volume_id]
        self._nfs.release(vol.parameters, self._others(vol))

    def _others(self, vol: StagedVolume) -> list[dict[str, str]]:
        with self._lock:
            return [v.parameters for v in self._volumes.values() if v is not vol]

    # -- the volumes' datasets (for `eddy preload` and `eddy status`) ----------------------------

    def volume_ids(self) -> list[str]:
        with self._lock:
            return list(self._volumes)

    def dataset_of(self, volume_id: str) -> str:
        """The dataset id of a staged volume, opening it in the engine if needed."""
        vol = self._volumes.get(volume_id)
        if vol is None or self.cache is None:
            raise NotFound(f"volume {volume_id} is not staged on node {self.node_id}")
        return self.cache.dataset_of(vol, lambda: self._records.secrets(volume_id))

    def NodeUnstageVolume(self, request):
        validate.volume_id(request)
        path = validate.path(request, "staging_target_path", self.kubelet_dir)
        with self._inflight.hold(request.volume_id):
            vol = self._volumes.get(request.volume_id)
            if vol is None:  # gone already; or its record was lost: the mounter may have it
                self.mounter.unstage(request.volume_id)
                mounts.unmount_all(path)
                return csi_pb2.NodeUnstageVolumeResponse()
            vol.targets = {t: ro for t, ro in vol.targets.items() if mounts.is_mount_point(t)}
            if vol.targets:
                raise FailedPrecondition(
                    f"volume {request.volume_id} is still published at "
                    f"{', '.join(sorted(vol.targets))}; unpublish it first")
            self._unstage(vol)
            mounts.unmount_all(path)
        return csi_pb2.NodeUnstageVolumeResponse()

    # -- publishing ----------------------------------------------------------------------------

    def NodePublishVolume(self, request):
        validate.volume_id(request)
        target = validate.path(request, "target_path", self.kubelet_dir)
        inline = is_ephemeral(dict(request.volume_context))
        if not inline:  # an inline volume's context is checked as it is parsed
            validate.path(request, "staging_target_path", self.kubelet_dir)
            check_limits(dict(request.volume_context))
        validate.capability(request)
        read_only = request.readonly or request.volume_capability.access_mode.mode in READER_ONLY
        with self._inflight.hold(request.volume_id):
            vol = self._stage_inline(request) if inline else self._staged(request)
            if target in vol.targets and mounts.is_mount_point(target):
                if vol.targets[target] != read_only:
                    raise AlreadyExists(f"{target} is already published with "
                                        f"read_only={vol.targets[target]}")
                return csi_pb2.NodePublishVolumeResponse()
            os.makedirs(target, exist_ok=True)
            try:
                mounts.bind_mount(vol.staging_path, target, read_only)
            except BaseException:
                if vol.ephemeral and not vol.targets:
                    self._unstage_inline(vol)
                raise
            vol.targets[target] = read_only
            self._records.save(vol)
        return csi_pb2.NodePublishVolumeResponse()

    def NodeUnpublishVolume(self, request):
        validate.volume_id(request)
        target = validate.path(request, "target_path", self.kubelet_dir)
        with self._inflight.hold(request.volume_id):
            vol = self._volumes.get(request.volume_id)
            if self._may_unmount(vol, request.volume_id, target):
                mounts.unmount_all(target)
                try:
                    os.rmdir(target)
                except FileNotFoundError:
                    pass
            if vol is not None and vol.targets.pop(target, None) is not None:
                self._records.save(vol)
            if vol is not None and vol.ephemeral and not vol.targets:
                self._unstage_inline(vol)
        return csi_pb2.NodeUnpublishVolumeResponse()

    def _may_unmount(self, vol: StagedVolume | None, volume_id: str, target: str) -> bool:
        """Whether the mount at `target` is this volume's to remove: a target it was published
        at, or (its record lost) a view of its connection; never another volume's target or a
        mount eddy did not make."""
        if vol is not None and target in vol.targets:
            return True
        with self._lock:
            owner = next((v.volume_id for v in self._volumes.values() if target in v.targets),
                         None) or mounts.foreign_mount(target, device.fsname(volume_id))
        if owner:
            self._log.warning("target.not_this_volume", volume_id=volume_id, target=target,
                              owner=owner)
        return not owner

    def _staged(self, request) -> StagedVolume:
        vol = self._volumes.get(request.volume_id)
        if vol is None:
            raise NotFound(f"volume {request.volume_id} is not staged on this node")
        if os.path.normpath(request.staging_target_path) != vol.staging_path:
            raise FailedPrecondition(f"volume {request.volume_id} is staged at "
                                     f"{vol.staging_path}, not {request.staging_target_path}")
        return vol

    # -- inline ephemeral volumes: kubelet publishes them without staging ----------------------

    def _stage_inline(self, request) -> StagedVolume:
        """Stage an inline volume at <state-dir>/ephemeral/<id>, if the node's policy allows
        its source (read-write where it allows writing it); it is then published like any
        staged volume, and re-adopted likewise."""
        context = request.volume_context
        writable = not request.readonly and validate.writable(request.volume_capability, context) \
            and self.ephemeral.may_write(context.get("source", ""))
        path = os.path.join(self._ephemeral_dir, "v-" + re.sub(r"[^\w.-]", "_", request.volume_id,
                                                               flags=re.ASCII))
        return self._stage(request.volume_id, path, self._dataset(dict(context), inline=True),
                           parse_secrets(dict(request.secrets)), True, writable)

    def _unstage_inline(self, vol: StagedVolume) -> None:
        self._unstage(vol)
        try:
            os.rmdir(vol.staging_path)
        except OSError:
            pass
        self._log.info("ephemeral.unstaged", volume_id=vol.volume_id)

    # -- information -------------------------------------------------------------------------

    def NodeGetVolumeStats(self, request):
        validate.volume_id(request)
        path = validate.path(request, "volume_path", self.kubelet_dir)
        vol = self._volumes.get(request.volume_id)
        if vol is None or (path != vol.staging_path and path not in vol.targets):
            raise NotFound(f"volume {request.volume_id} is not mounted at {request.volume_path}")
        self.health.refresh()
        abnormal, message = self.health.condition(vol.volume_id)
        usage = []
        if self.cache is not None:
            abnormal, message, space = self.cache.stats(
                vol, lambda: self._records.secrets(vol.volume_id), abnormal, message)
            if space is not None:  # the volume's share of the node's cache
                total, used = space
                usage.append(csi_pb2.VolumeUsage(unit=csi_pb2.VolumeUsage.BYTES, total=total,
                                                 used=used, available=max(total - used, 0)))
        return csi_pb2.NodeGetVolumeStatsResponse(
            usage=usage,
            volume_condition=csi_pb2.VolumeCondition(abnormal=abnormal, message=message))

    def volume_mounts(self) -> list[tuple[str, bool, str]]:
        """(volume id, abnormal, message) of every staged volume's mount (for `eddy status`)."""
        self.health.refresh()
        return [(v, *self.health.condition(v)) for v in self.volume_ids()]

    def NodeGetCapabilities(self, request):
        caps = [NodeCap.STAGE_UNSTAGE_VOLUME, NodeCap.GET_VOLUME_STATS, NodeCap.VOLUME_CONDITION]
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=[
            csi_pb2.NodeServiceCapability(rpc=NodeCap(type=c)) for c in caps])

    def NodeGetInfo(self, request):
        return csi_pb2.NodeGetInfoResponse(node_id=self.node_id,
                                           max_volumes_per_node=self.max_volumes)
