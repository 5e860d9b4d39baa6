"""Talk to a node's cache engine over its unix socket with the same API as `CacheEngine`.

Mount daemons in a node plugin use this; `eddy mount` uses a `CacheEngine` in-process instead.
gRPC status codes are turned back into the exceptions the engine raised (with the errno the
engine attached), so callers cannot tell the two apart. When nobody answers on the socket (the
node plugin is restarting), calls fail at once with `EngineUnreachable` instead of waiting: a
mount daemon then reads the source directly until the engine is back (see reader.py).
"""

from __future__ import annotations

import errno
from dataclasses import replace

import grpc

from eddy.base.errors import InvalidArgument
from eddy.base.pb import cache_pb2, cache_pb2_grpc
from eddy.base.rpc import ERRNO_KEY, ERROR_KEY

from .spec import DatasetSpec
from .types import DatasetInfo, Location
from .ufs.base import Entry, UfsUnavailable
from .wire import DatasetNotOpen, EngineUnreachable, entry_from_pb, location_from_pb

MAX_MESSAGE = 128 << 20  # an uncached block travels inline; blocks are at most 64 MiB
CONNECT_TIMEOUT = 30.0  # how long opening a dataset waits for a starting engine
CALL_TIMEOUT = 30.0
LOCATE_TIMEOUT = 300.0  # a miss reads a whole block from the source
RECONNECT_BACKOFF_MS = 1000  # notice a restarted engine within about a second


def _metadata(err: grpc.RpcError) -> dict[str, str]:
    return dict(err.trailing_metadata() or ())


def _errno(err: grpc.RpcError, default: int) -> int:
    value = _metadata(err).get(ERRNO_KEY)
    return int(value) if value else default


_GONE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def translate(err: grpc.RpcError) -> Exception:
    code, details = err.code(), err.details() or ""
    if code in _GONE and ERROR_KEY not in _metadata(err):
        # No answer from the engine's code: nobody listens, or a stopping engine cancelled
        # the call (its grace ran out). Either way the mount reads the source instead.
        return EngineUnreachable(errno.EIO, f"cache engine unreachable: {code.name}: {details}")
    if code == grpc.StatusCode.NOT_FOUND:
        return FileNotFoundError(_errno(err, errno.ENOENT), details)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionError(_errno(err, errno.EACCES), details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return DatasetNotOpen(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(details)
    if code == grpc.StatusCode.UNAVAILABLE:
        e = UfsUnavailable(details or "cache engine unavailable")
        e.errno = _errno(err, errno.EIO)
        return e
    return OSError(_errno(err, errno.EIO), f"cache engine: {code.name}: {details}")


def _fresh_for(resp: cache_pb2.StatResponse | cache_pb2.ListResponse) -> float | None:
    return resp.fresh_for if resp.HasField("fresh_for") else None


class EngineClient:
    """The engine's API over its unix socket, for mount daemons of a node plugin.

    Owns one gRPC channel. A `reader.DatasetReader` calls it exactly as it would call an
    in-process `CacheEngine` (open_dataset, stat, list, locate, report_corrupt, extent);
    errors come back as the exceptions the engine raised (see `translate`).
    """

    def __init__(self, endpoint: str):
        target = endpoint if endpoint.startswith("unix:") else f"unix://{endpoint}"
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ])
        self._stub = cache_pb2_grpc.CacheEngineStub(self.channel)

    def _call(self, method, request, timeout=CALL_TIMEOUT, wait=False):
        try:
            return method(request, timeout=timeout, wait_for_ready=wait)
        except grpc.RpcError as err:
            raise translate(err) from None

    def open_dataset(self, spec: DatasetSpec, secrets: dict[str, str],
                     volume_id: str = "") -> DatasetInfo:
        resp = self._call(self._stub.OpenDataset, cache_pb2.OpenDatasetRequest(
            parameters=spec.engine_parameters(), secrets=secrets, volume_id=volume_id),
            timeout=CONNECT_TIMEOUT, wait=True)
        return DatasetInfo(resp.dataset_id, resp.block_size,
                           None if resp.immutable else resp.metadata_ttl, resp.read_ahead)

    def stat(self, dataset_id: str, path: str) -> Entry:
        return self.stat_fresh(dataset_id, path)[0]

    def list(self, dataset_id: str, path: str) -> list[Entry]:
        return self.list_fresh(dataset_id, path)[0]

    def stat_fresh(self, dataset_id: str, path: str) -> tuple[Entry, float | None]:
        """The entry and the seconds it stays fresh (None: the engine did not say)."""
        resp = self._call(self._stub.Stat, cache_pb2.StatRequest(dataset_id=dataset_id,
                                                                 path=path))
        return entry_from_pb(resp.entry), _fresh_for(resp)

    def list_fresh(self, dataset_id: str, path: str) -> tuple[list[Entry], float | None]:
        resp = self._call(self._stub.List, cache_pb2.ListRequest(dataset_id=dataset_id,
                                                                 path=path))
        return [entry_from_pb(e) for e in resp.entries], _fresh_for(resp)

    def locate(self, dataset_id: str, path: str, version: str, index: int,
               file_size: int, following: int = 0, next_files: int = 0) -> Location:
        resp = self._call(self._stub.Locate, cache_pb2.LocateRequest(
            dataset_id=dataset_id, path=path, version=version, index=index,
            file_size=file_size, following=following, next_files=next_files),
            timeout=LOCATE_TIMEOUT)
        files = tuple((f.path, f.version, location_from_pb(f.file)) for f in resp.next_files)
        if resp.WhichOneof("where") == "data":
            return Location(data=resp.data, next_files=files)
        return replace(location_from_pb(resp.file), next_files=files,
                       following=tuple(map(location_from_pb, resp.following)))

    def report_corrupt(self, dataset_id: str, path: str, version: str, index: int) -> None:
        self._call(self._stub.ReportCorrupt, cache_pb2.ReportCorruptRequest(
            dataset_id=dataset_id, path=path, version=version, index=index))

    def changed(self, dataset_id: str, paths: list[str], load: bool = False,
                tree: bool = False) -> None:
        self._call(self._stub.Changed, cache_pb2.ChangedRequest(
            dataset_id=dataset_id, paths=paths, load=load, tree=tree))

    def extent(self, dataset_id: str, path: str, version: str, file_size: int,
               wait: float = 0.0) -> str | None:
        resp = self._call(self._stub.Extent, cache_pb2.ExtentRequest(
            dataset_id=dataset_id, path=path, version=version, file_size=file_size, wait=wait),
            timeout=CALL_TIMEOUT + wait)
        return resp.path or None

    def close(self) -> None:
        self.channel.close()
