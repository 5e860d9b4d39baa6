"""gRPC face of the cache engine (proto/cache.proto): thin translation, no logic.

The node plugin serves it on its second unix socket; mount daemons and the CLI call it.
A dataset id that the engine does not know (it restarted) is FAILED_PRECONDITION, which tells
a client to open the dataset again.
"""

from __future__ import annotations

from eddy.errors import NotFound
from eddy.pb import cache_pb2, cache_pb2_grpc
from eddy.rpc import Servicer, require

from .engine import CacheEngine
from .spec import parse_parameters, parse_secrets
from .wire import DatasetNotOpen, entry_to_pb


class CacheEngineService(Servicer, cache_pb2_grpc.CacheEngineServicer):
    def __init__(self, engine: CacheEngine):
        self.engine = engine

    def _call(self, method, *args):
        try:
            return method(*args)
        except NotFound as e:
            raise DatasetNotOpen(str(e)) from None

    def OpenDataset(self, request):
        spec = parse_parameters(dict(request.parameters))
        info = self.engine.open_dataset(spec, parse_secrets(dict(request.secrets)))
        return cache_pb2.OpenDatasetResponse(
            dataset_id=info.dataset_id, block_size=info.block_size,
            metadata_ttl=info.metadata_ttl or 0.0, immutable=info.metadata_ttl is None,
            read_ahead=info.read_ahead)

    def Stat(self, request):
        require(request, "dataset_id")
        entry = self._call(self.engine.stat, request.dataset_id, request.path)
        return cache_pb2.StatResponse(entry=entry_to_pb(entry))

    def List(self, request):
        require(request, "dataset_id")
        entries = self._call(self.engine.list, request.dataset_id, request.path)
        return cache_pb2.ListResponse(entries=[entry_to_pb(e) for e in entries])

    def Locate(self, request):
        require(request, "dataset_id", "path")
        loc = self._call(self.engine.locate, request.dataset_id, request.path,
                         request.version, request.index, request.file_size)
        if loc.data is not None:
            return cache_pb2.LocateResponse(data=loc.data)
        return cache_pb2.LocateResponse(file=cache_pb2.BlockFile(
            path=loc.file, offset=loc.offset, length=loc.length, checksum=loc.checksum))

    def ReportCorrupt(self, request):
        require(request, "dataset_id", "path")
        self._call(self.engine.report_corrupt, request.dataset_id, request.path,
                   request.version, request.index)
        return cache_pb2.ReportCorruptResponse()
