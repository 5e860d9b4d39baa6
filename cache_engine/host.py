"""The cache engine hosted in a process: built from tier flags, served on a private unix socket.

Two processes host an engine: the node plugin (`eddy serve`, one engine for every volume on the
node) and a standalone mount (`eddy mount`, an engine inside its one mount daemon). Both need
the same steps: parse the tiers, open the engine on its state directory, and serve the engine's
API (proto/cache.proto) on a socket only root may use, since the engine hands out tier files.
This module is the one door csi uses to do that; everything else in csi reaches the engine
through the client (cache_engine.client) or as the `EngineHost.engine` it holds.
"""

from __future__ import annotations

import functools
import os
from concurrent import futures

import grpc

from eddy.base.pb import cache_pb2_grpc
from eddy.base.rpc import bind_unix

from .client import MAX_MESSAGE
from .engine import CacheEngine
from .scrub import ScrubPolicy
from .service import CacheEngineService, Volumes
from .tiers import parse_tiers
from .types import StateDirBusy
from .ufs import SAME_ORIGIN, RedirectPolicy, open_ufs

DEFAULT_TIER_SIZE = "10Gi"
__all__ = ["CacheEngine", "EngineHost", "ScrubPolicy", "StateDirBusy", "Volumes", "default_tiers",
           "engine_server", "start_private"]

THREADS = 32  # concurrent engine calls from all mount daemons (misses block on the source)


def default_tiers(state_dir: str) -> list[str]:
    """With no --tier: one disk tier under the state directory."""
    return [f"SSD:{os.path.join(state_dir, 'cache')}:{DEFAULT_TIER_SIZE}"]


def engine_server(threads: int) -> grpc.Server:
    """A server for the cache engine's API (an uncached block travels inline: big messages)."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="engine-rpc"),
        options=[("grpc.max_send_message_length", MAX_MESSAGE),
                 ("grpc.max_receive_message_length", MAX_MESSAGE)])


def start_private(server: grpc.Server, path: str) -> None:
    """Serve on a unix socket at `path` that only root may use: it hands out tier files."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    bind_unix(server, path)
    server.start()


class EngineHost:
    """One process's cache engine and the gRPC server that serves it on a private socket.

    Owns the `CacheEngine` (opened on `state_dir` with the tiers given as NAME:PATH:SIZE flags;
    StateDirBusy if another process holds that directory) and its server. The node plugin's
    `csi.server.Driver` and a standalone mount daemon create one; `serve` starts the socket.
    `redirects` is the node's --http-redirect-allow, for every http(s) source it opens;
    `scrub` its --extent-trust and --scrub-rate (scrub.py).
    """

    def __init__(self, tiers: list[str], state_dir: str, threads: int = THREADS,
                 redirects: RedirectPolicy = SAME_ORIGIN, scrub: ScrubPolicy = ScrubPolicy()):
        self.engine = CacheEngine(parse_tiers(tiers), state_dir, open_ufs=functools.partial(
            open_ufs, redirects=redirects), scrub=scrub)
        self.server = engine_server(threads)
        self.path: str | None = None

    @property
    def tier_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.engine.tiers)

    def serve(self, path: str, volumes: Volumes) -> None:
        """Start serving the engine's API on the unix socket at `path` (mode 0600), and only
        there: it hands out tier files and opens any source it is given, so it is root's."""
        cache_pb2_grpc.add_CacheEngineServicer_to_server(
            CacheEngineService(self.engine, volumes), self.server)
        self.path = path
        start_private(self.server, path)

    def close(self, grace: float = 1.0) -> None:
        """Stop the server, remove its socket, close the engine."""
        if self.path is not None:
            self.server.stop(grace).wait()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.engine.close()
