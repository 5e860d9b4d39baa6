"""Assemble the CSI services for a mode (`all`, `controller`, `node`) on a unix socket."""

from __future__ import annotations

import grp
import os
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from cache_engine.host import EngineHost, ScrubPolicy, Volumes, default_tiers
from cache_engine.ufs import RedirectPolicy
from eddy.base import log
from eddy.base.errors import InvalidArgument
from eddy.base.pb import csi_pb2_grpc
from eddy.base.rpc import bind_unix
from eddy.base.sockets import socket_path

from . import metrics
from .controller import ControllerService
from .ephemeral import EphemeralPolicy
from .identity import IdentityService
from .mounter.service import MounterClient
from .node import KUBELET_DIR, NodeService
from .state.secrets import DEFAULT_SECRETS_DIR
from .state.volumes import SqliteVolumeStore
from .volume_cache import VolumeCache

MODES = ("all", "controller", "node")
STATE_STORES = ("sqlite", "kubernetes")


def _controller(config: DriverConfig) -> ControllerService:
    """The controller over the configured volume store, resolving pvc:// through the API."""
    from .kube.api import LazyCoreApi, own_namespace
    from .kube.pvc import PvcResolver

    if config.state_store not in STATE_STORES:
        raise InvalidArgument(f"--state-store {config.state_store!r}: use one of "
                              f"{', '.join(STATE_STORES)}")
    api = LazyCoreApi()
    if config.state_store == "kubernetes":
        from .kube.volume_store import KubernetesVolumeStore

        api.core()  # fail at start, not at the first CreateVolume, when there is no cluster
        store = KubernetesVolumeStore(api, config.state_namespace or own_namespace())
    else:
        store = SqliteVolumeStore(os.path.join(config.state_dir, "controller.db"))
    return ControllerService(store, resolve=PvcResolver(api))


def _group_id(name: str) -> int | None:
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise InvalidArgument(f"--socket-group {name!r}: no such group on this host") from None


@dataclass
class DriverConfig:
    """Everything `eddy serve` was told on its command line, as `Driver` needs it."""

    mode: str
    endpoint: str
    node_id: str
    state_dir: str
    driver_name: str = "eddy.csi.io"
    max_volumes: int = 0
    log_level: str = "info"
    tiers: list[str] = field(default_factory=list)  # NAME:PATH:SIZE[:HIGH:LOW], fastest first
    engine_endpoint: str = ""  # default: unix://<state_dir>/engine.sock
    metrics_port: int = 0  # 0: no metrics endpoint
    metrics_address: str = "0.0.0.0"
    state_store: str = "sqlite"  # or "kubernetes": ConfigMaps, for several controller replicas
    state_namespace: str = ""  # for the kubernetes store; default: the pod's own namespace
    ephemeral_allow: list[str] = field(default_factory=list)  # inline volume source prefixes
    ephemeral_endpoints: list[str] = field(default_factory=list)  # S3 endpoints they may use
    ephemeral_tiers: list[str] = field(default_factory=list)  # node tiers they may use
    ephemeral_private: bool = False  # may they reach loopback, link-local, private addresses
    ephemeral_write: list[str] = field(default_factory=list)  # source prefixes they may write
    http_redirect_allow: list[str] = field(default_factory=list)  # origins beyond a source's
    mounter: str = ""  # unix:///PATH of `eddy mounter`; "" runs the mounter in this process
    secrets_dir: str = DEFAULT_SECRETS_DIR  # node-stage secrets, on tmpfs only
    kubelet_dir: str = KUBELET_DIR  # staging and target paths must be beneath it
    local_allow: list[str] = field(default_factory=list)  # local:// roots (empty: anywhere)
    socket_group: str = ""  # the CSI socket is 0660 for this group ("" : 0600, root's alone)
    scrub: dict = field(default_factory=dict)  # `ScrubPolicy` keywords: --extent-trust ...


class Driver:
    """The running gRPC server and the services behind it."""

    def __init__(self, config: DriverConfig):
        if config.mode not in MODES:
            raise InvalidArgument(f"--mode {config.mode!r}: use one of {', '.join(MODES)}")
        self.config = config
        self.path = socket_path(config.endpoint)
        os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        with_controller = config.mode in ("all", "controller")
        with_node = config.mode in ("all", "node")
        self.node = None
        self.controller = None
        self.host: EngineHost | None = None
        self.metrics_server = None
        if with_controller:
            self.controller = _controller(config)
            csi_pb2_grpc.add_ControllerServicer_to_server(self.controller, self.server)
        if with_node:
            self.engine_endpoint = config.engine_endpoint or \
                f"unix://{os.path.join(config.state_dir, 'engine.sock')}"
            redirects = RedirectPolicy.from_flags(config.http_redirect_allow)
            self.host = EngineHost(config.tiers or default_tiers(config.state_dir),
                                   os.path.join(config.state_dir, "engine"),
                                   redirects=redirects, scrub=ScrubPolicy(**config.scrub))
            # Without --mounter, the node runs a mounter in this process.
            mounter = MounterClient(config.mounter) if config.mounter else None
            self.node = NodeService(config.node_id, config.state_dir, config.max_volumes,
                                    config.log_level, mounter=mounter,
                                    secrets_dir=config.secrets_dir,
                                    kubelet_dir=config.kubelet_dir,
                                    local_allow=tuple(config.local_allow),
                                    engine_endpoint=self.engine_endpoint,
                                    tier_names=self.host.tier_names,
                                    cache=VolumeCache(self.host.engine), redirects=redirects,
                                    ephemeral=EphemeralPolicy.from_flags(
                                        config.ephemeral_allow, config.ephemeral_endpoints,
                                        config.ephemeral_tiers, config.ephemeral_private,
                                        write=config.ephemeral_write))
            csi_pb2_grpc.add_NodeServicer_to_server(self.node, self.server)
            # The engine's API lives only on its own 0600 socket (for the daemons and the CLI),
            # never on the CSI socket, which the CO's sidecars reach.
            self.volumes = Volumes(self.node.volume_ids, self.node.dataset_of,
                                   self.node.volume_mounts)
        identity = IdentityService(config.driver_name, with_controller)
        csi_pb2_grpc.add_IdentityServicer_to_server(identity, self.server)

    def start(self) -> None:
        if self.host is not None:
            # Before the node service: re-adopted mount daemons read through it at once.
            self.host.serve(socket_path(self.engine_endpoint), self.volumes)
        if self.node is not None:
            self.node.start()
        group = _group_id(self.config.socket_group)
        bind_unix(self.server, self.path, 0o660 if group is not None else 0o600, group)
        self.server.start()
        if self.host is not None and self.config.metrics_port:
            self.metrics_server = metrics.serve(self.host.engine, self.node.health.states,
                                                self.config.metrics_port,
                                                self.config.metrics_address)
        log.get("csi.server").info("serving", mode=self.config.mode, endpoint=self.config.endpoint,
                                   node_id=self.config.node_id)

    def stop(self, grace: float = 5.0) -> None:
        self.server.stop(grace).wait()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        if self.node is not None:
            self.node.close()
        if self.host is not None:
            self.host.close(grace)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def wait(self) -> None:
        self.server.wait_for_termination()
