"""Serve servicer objects in-process on a real gRPC server over a temp unix socket.

Tests talk to servicers through real stubs, so status codes, deadlines and message encoding are
exercised exactly as a CO would see them. Usage:

    with serve(ControllerService(store)) as served:
        stub = csi_pb2_grpc.ControllerStub(served.channel)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Served:
    channel: grpc.Channel
    endpoint: str  # unix:///path, as `eddy serve --endpoint` takes it
    socket: str


def add_servicer(server: grpc.Server, servicer: object) -> None:
    """Register `servicer` for every generated `...Servicer` base it derives from."""
    added = False
    for base in type(servicer).__mro__:
        module = sys.modules.get(base.__module__)
        add = getattr(module, f"add_{base.__name__}_to_server", None)
        if add is not None:
            add(servicer, server)
            added = True
    if not added:
        raise TypeError(f"{type(servicer).__name__} derives from no generated Servicer class")


@contextlib.contextmanager
def serve(*servicers: object, workers: int = 16) -> Iterator[Served]:
    """Serve `servicers` on a fresh unix socket; yield a ready channel; stop on exit."""
    # A short directory: unix socket paths are limited to 107 bytes, pytest's tmp_path is long.
    workdir = tempfile.mkdtemp(prefix="eddy-grpc-", dir="/tmp")
    socket = os.path.join(workdir, "grpc.sock")
    endpoint = f"unix://{socket}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    for servicer in servicers:
        add_servicer(server, servicer)
    server.add_insecure_port(endpoint)
    server.start()
    channel = grpc.insecure_channel(endpoint)
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield Served(channel, endpoint, socket)
    finally:
        channel.close()
        server.stop(grace=None).wait()
        shutil.rmtree(workdir, ignore_errors=True)
