"""Assemble the CSI services for a mode (`all`, `controller`, `node`) on a unix socket."""

from __future__ import annotations

import os
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from cache_engine.client import MAX_MESSAGE
from cache_engine.engine import CacheEngine
from cache_engine.service import CacheEngineService, Volumes
from cache_engine.tiers import parse_tiers
from eddy import log
from eddy.errors import InvalidArgument
from eddy.pb import cache_pb2_grpc, csi_pb2_grpc
from eddy.sockets import claim_socket_path, socket_path

from . import metrics
from .controller import ControllerService
from .ephemeral import EphemeralPolicy
from .identity import IdentityService
from .mounter.mounter import Mounter
from .mounter.service import MounterClient
from .node import NodeService
from .state import SqliteVolumeStore
from .volume_cache import VolumeCache

MODES = ("all", "controller", "node")
STATE_STORES = ("sqlite", "kubernetes")
DEFAULT_TIER_SIZE = "10Gi"
ENGINE_THREADS = 32  # concurrent engine calls from all mount daemons (misses block on the source)


def default_tiers(state_dir: str) -> list[str]:
    """With no --tier: one disk tier under the state directory."""
    return [f"SSD:{os.path.join(state_dir, 'cache')}:{DEFAULT_TIER_SIZE}"]


def bind_unix(server: grpc.Server, path: str) -> None:
    """Bind `server` to a unix socket at `path`, replacing a stale socket from a crash."""
    claim_socket_path(path)
    server.add_insecure_port(f"unix://{path}")


def _controller(config: DriverConfig) -> ControllerService:
    """The controller over the configured volume store, resolving pvc:// through the API."""
    from .kube import LazyCoreApi, own_namespace
    from .pvc import PvcResolver

    if config.state_store not in STATE_STORES:
        raise InvalidArgument(f"--state-store {config.state_store!r}: use one of "
                              f"{', '.join(STATE_STORES)}")
    api = LazyCoreApi()
    if config.state_store == "kubernetes":
        from .kube_state import KubernetesVolumeStore

        api.core()  # fail at start, not at the first CreateVolume, when there is no cluster
        store = KubernetesVolumeStore(api, config.state_namespace or own_namespace())
    else:
        store = SqliteVolumeStore(os.path.join(config.state_dir, "controller.db"))
    return ControllerService(store, resolve=PvcResolver(api))


def _mounter(config: DriverConfig) -> Mounter | MounterClient:
    """The node's mounter: `eddy mounter` over its socket, or one in this process."""
    if config.mounter:
        return MounterClient(config.mounter)
    return Mounter(os.path.join(config.state_dir, "mounter"), others_hold=False)


def engine_server(threads: int) -> grpc.Server:
    """A server for the cache engine's API (an uncached block travels inline: big messages)."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="engine-rpc"),
        options=[("grpc.max_send_message_length", MAX_MESSAGE),
                 ("grpc.max_receive_message_length", MAX_MESSAGE)])


def start_private(server: grpc.Server, path: str) -> None:
    """Serve on a unix socket at `path` that only root may use: it hands out tier files."""
    bind_unix(server, path)
    server.start()
    os.chmod(path, 0o600)


@dataclass
class DriverConfig:
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
    mounter: str = ""  # unix:///PATH of `eddy mounter`; "" runs the mounter in this process


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
        self.engine = None
        self.engine_server = None
        self.metrics_server = None
        if with_controller:
            self.controller = _controller(config)
            csi_pb2_grpc.add_ControllerServicer_to_server(self.controller, self.server)
        if with_node:
            self._start_engine()
            self.node = NodeService(config.node_id, config.state_dir, config.max_volumes,
                                    config.log_level, mounter=_mounter(config),
                                    engine_endpoint=self.engine_endpoint,
                                    tier_names=tuple(t.name for t in self.engine.tiers),
                                    cache=VolumeCache(self.engine),
                                    ephemeral=EphemeralPolicy.from_flags(
                                        config.ephemeral_allow, config.ephemeral_endpoints,
                                        config.ephemeral_tiers))
            csi_pb2_grpc.add_NodeServicer_to_server(self.node, self.server)
            # The CLI (`eddy status`, `eddy preload`) reaches the engine on either socket.
            service = CacheEngineService(self.engine, Volumes(
                self.node.volume_ids, self.node.dataset_of, self.node.volume_mounts))
            for server in (self.engine_server, self.server):
                cache_pb2_grpc.add_CacheEngineServicer_to_server(service, server)
        identity = IdentityService(config.driver_name, with_controller)
        csi_pb2_grpc.add_IdentityServicer_to_server(identity, self.server)

    def _start_engine(self) -> None:
        """The node's cache engine and its own socket, which only root may use."""
        config = self.config
        tiers = parse_tiers(config.tiers or default_tiers(config.state_dir))
        self.engine_endpoint = config.engine_endpoint or \
            f"unix://{os.path.join(config.state_dir, 'engine.sock')}"
        self.engine_path = socket_path(self.engine_endpoint)
        self.engine = CacheEngine(tiers, os.path.join(config.state_dir, "engine"))
        self.engine_server = engine_server(ENGINE_THREADS)

    def start(self) -> None:
        if self.engine_server is not None:
            # Before the node service: re-adopted mount daemons read through it at once.
            start_private(self.engine_server, self.engine_path)
        if self.node is not None:
            self.node.start()
        bind_unix(self.server, self.path)
        self.server.start()
        if self.engine is not None and self.config.metrics_port:
            self.metrics_server = metrics.serve(self.engine, self.node.mount_states,
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
        if self.engine_server is not None:
            self.engine_server.stop(grace).wait()
            self.engine.close()
        for path in (self.path, getattr(self, "engine_path", None)):
            try:
                if path:
                    os.unlink(path)
            except FileNotFoundError:
                pass

    def wait(self) -> None:
        self.server.wait_for_termination()
