"""gRPC face of the cache engine (proto/cache.proto): thin translation, no logic.

The node plugin serves it on its second unix socket; mount daemons and the CLI call it.
A dataset id that the engine does not know (it restarted) is FAILED_PRECONDITION, which tells
a client to open the dataset again.
"""

from __future__ import annotations

from collections.abc import Callable

from eddy.base.errors import InvalidArgument, NotFound
from eddy.base.pb import cache_pb2, cache_pb2_grpc
from eddy.base.rpc import Servicer, require

from .engine import CacheEngine
from .preload import DEFAULT_WORKERS
from .spec import parse_parameters, parse_secrets
from .wire import DatasetNotOpen, entry_to_pb, location_to_pb, progress_to_pb, status_to_pb

MAX_FOLLOWING = 64  # blocks (or files) one Locate may answer for beyond the one asked


class Volumes:
    """The volumes a preload or status may name: how to open each one's dataset.

    The node plugin gives its staged volumes; `eddy mount` its one volume."""

    def __init__(self, names: Callable[[], list[str]], open_dataset: Callable[[str], str],
                 mounts: Callable[[], list[tuple[str, bool, str]]] = list):
        self.names = names  # volume ids
        self.open_dataset = open_dataset  # volume id -> dataset id; NotFound if unknown
        self.mounts = mounts  # (volume id, abnormal, message) of each staged volume's mount


class CacheEngineService(Servicer, cache_pb2_grpc.CacheEngineServicer):
    """The gRPC servicer of proto/cache.proto over one `CacheEngine`: translation only.

    The node plugin serves it on its sockets (mount daemons, the CLI) and `eddy mount` on
    its own; a dataset id the engine does not know becomes FAILED_PRECONDITION.
    """

    def __init__(self, engine: CacheEngine, volumes: Volumes | None = None):
        self.engine = engine
        self.volumes = volumes

    def _call(self, method, *args):
        try:
            return method(*args)
        except NotFound as e:
            raise DatasetNotOpen(str(e)) from None

    def OpenDataset(self, request):
        spec = parse_parameters(dict(request.parameters))
        info = self.engine.open_dataset(spec, parse_secrets(dict(request.secrets)),
                                        request.volume_id)
        return cache_pb2.OpenDatasetResponse(
            dataset_id=info.dataset_id, block_size=info.block_size,
            metadata_ttl=info.metadata_ttl or 0.0, immutable=info.metadata_ttl is None,
            read_ahead=info.read_ahead)

    def Stat(self, request):
        require(request, "dataset_id")
        entry, fresh_for = self._call(self.engine.stat_fresh, request.dataset_id, request.path)
        return cache_pb2.StatResponse(entry=entry_to_pb(entry), fresh_for=fresh_for)

    def List(self, request):
        require(request, "dataset_id")
        entries, fresh_for = self._call(self.engine.list_fresh, request.dataset_id, request.path)
        return cache_pb2.ListResponse(entries=[entry_to_pb(e) for e in entries],
                                      fresh_for=fresh_for)

    def Locate(self, request):
        require(request, "dataset_id", "path")
        loc = self._call(self.engine.locate, request.dataset_id, request.path,
                         request.version, request.index, request.file_size,
                         min(request.following, MAX_FOLLOWING),
                         min(request.next_files, MAX_FOLLOWING))
        next_files = [cache_pb2.FileBlock(path=path, version=version, file=location_to_pb(first))
                      for path, version, first in loc.next_files]
        if loc.file is None:  # no tier took it: the bytes travel inline
            return cache_pb2.LocateResponse(data=bytes(loc.data), next_files=next_files)
        return cache_pb2.LocateResponse(file=location_to_pb(loc), next_files=next_files,
                                        following=[location_to_pb(f) for f in loc.following])

    def ReportCorrupt(self, request):
        require(request, "dataset_id", "path")
        self._call(self.engine.report_corrupt, request.dataset_id, request.path,
                   request.version, request.index)
        return cache_pb2.ReportCorruptResponse()

    def Changed(self, request):
        require(request, "dataset_id")
        self._call(self.engine.changed, request.dataset_id, list(request.paths), request.load,
                   request.tree)
        return cache_pb2.ChangedResponse()

    def Extent(self, request):
        require(request, "dataset_id", "path")
        path = self._call(self.engine.extent, request.dataset_id, request.path,
                          request.version, request.file_size, request.wait)
        return cache_pb2.ExtentResponse(path=path or "")

    # --- preload and status (the CLI) ------------------------------------------------------

    def _dataset_of(self, target: cache_pb2.PreloadTarget) -> str:
        if target.dataset_id:
            return target.dataset_id
        if target.volume_id:
            if self.volumes is None:
                raise NotFound(f"volume {target.volume_id} is not known here")
            return self.volumes.open_dataset(target.volume_id)
        names = self.volumes.names() if self.volumes is not None else []
        if len(names) == 1:
            return self.volumes.open_dataset(names[0])
        if names:
            raise InvalidArgument(f"{len(names)} volumes on this node: name one with "
                                  f"--volume-id ({', '.join(sorted(names))})")
        rows = self.engine.status()
        if len(rows) == 1 and rows[0].source:
            return rows[0].dataset_id
        raise InvalidArgument("no volume is staged on this node" if not rows else
                              "several datasets on this node: name a volume with --volume-id")

    def Preload(self, request):
        ds = self._dataset_of(request.target)
        progress = self._call(self.engine.preload, ds, tuple(request.paths),
                              request.workers or DEFAULT_WORKERS)
        return progress_to_pb(progress)

    def GetPreload(self, request):
        return self._job(self.engine.preload_progress, request)

    def CancelPreload(self, request):
        return self._job(self.engine.cancel_preload, request)

    def _job(self, method, target: cache_pb2.PreloadTarget) -> cache_pb2.PreloadJob:
        ds = self._dataset_of(target)
        progress = self._call(method, ds)
        if progress is None:
            raise NotFound(f"dataset {ds} has no preload job")
        return progress_to_pb(progress)

    def Status(self, request):
        rows = self.engine.status(wait=request.wait or 0)
        tiers = self.engine.statistics().tiers
        mounts = self.volumes.mounts() if self.volumes is not None else []
        return cache_pb2.StatusResponse(
            datasets=[status_to_pb(r) for r in rows],
            tiers=list(tiers),
            tier_used={name: t.used for name, t in tiers.items()},
            tier_size={name: t.size for name, t in tiers.items()},
            tier_held={name: t.held for name, t in tiers.items()},
            mounts=[cache_pb2.VolumeMount(volume_id=v, abnormal=a, message=m)
                    for v, a, m in mounts])
