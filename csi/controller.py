"""CSI Controller service: volumes are validated dataset definitions, recorded by name.

CreateVolume provisions nothing: it validates the StorageClass parameters, settles the cache
capacity, records the volume and returns the canonical parameters as volume_context, which is
what NodeStageVolume later builds the mount from. DeleteVolume forgets the record and never
touches the source. Volume ids are "eddy-" + a random uuid4, not a hash of the name: a volume
deleted and created again under the same name must not share an id (and so staging paths and
cache state keyed by id) with its predecessor, and idempotency by name is the store's job.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from cache_engine.quantity import format_bytes
from cache_engine.spec import MIN_CACHE_CAPACITY, DatasetSpec, parse_parameters
from csi import validate
from csi.inflight import InFlight
from csi.state.volumes import VolumeRecord, VolumeStore
from eddy.base import log
from eddy.base.errors import (
    Aborted,
    AlreadyExists,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from eddy.base.pb import csi_pb2, csi_pb2_grpc
from eddy.base.rpc import Servicer, require

VOLUME_ID = re.compile(r"^eddy-[0-9a-f]{32}$")
RPC = csi_pb2.ControllerServiceCapability.RPC
CAPABILITIES = (RPC.CREATE_DELETE_VOLUME, RPC.LIST_VOLUMES, RPC.GET_CAPACITY)


def no_pvc_sources(spec: DatasetSpec) -> DatasetSpec:
    """The resolver of a controller with no Kubernetes API: pvc:// cannot be resolved."""
    if spec.source.scheme == "pvc":
        raise Unavailable(f"source {spec.source.uri}: pvc:// sources need the Kubernetes API, "
                          "and this controller has none")
    return spec


class ControllerService(Servicer, csi_pb2_grpc.ControllerServicer):
    """Controller RPCs over a `VolumeStore`; `capacity()` answers GetCapacity (bytes).

    `resolve` turns a pvc:// source into the source its PersistentVolume's data really is
    (csi/kube/pvc.py); the volume records and returns the resolved one, so nodes never need the API.
    """

    def __init__(self, store: VolumeStore, capacity: Callable[[], int] | None = None,
                 resolve: Callable[[DatasetSpec], DatasetSpec] = no_pvc_sources) -> None:
        self._store = store
        self._capacity = capacity
        self._resolve = resolve
        self._inflight = InFlight()
        self._log = log.get("csi.controller")

    def CreateVolume(self, request):
        validate.name(request)  # before the store: a name must fit a record
        require(request, "volume_capabilities")
        problem = validate.capabilities_problem(request.volume_capabilities)
        if problem:
            raise InvalidArgument(problem)
        if request.HasField("volume_content_source"):
            raise InvalidArgument("volume_content_source is not supported: volumes read a source")
        if getattr(request, "mutable_parameters", None):  # CSI 1.9+
            raise InvalidArgument("mutable_parameters are not supported")
        spec = self._resolve(parse_parameters(dict(request.parameters)))
        required, limit = _capacity_range(request)
        capacity = _settle_capacity(spec.cache_capacity, required, limit)
        parameters = spec.to_parameters()
        if capacity:
            parameters["cacheCapacity"] = str(capacity)
        with self._inflight.hold(f"name/{request.name}"):
            record = self._store.get_by_name(request.name)
            if record is None:
                record = VolumeRecord(f"eddy-{uuid.uuid4().hex}", request.name, parameters,
                                      capacity, time.time())
                try:
                    self._store.create(record)
                    self._log.info("volume.created", volume_id=record.volume_id, name=record.name,
                                   capacity=capacity, source=parameters["source"])
                except AlreadyExists:  # created meanwhile by another controller replica
                    record = self._store.get_by_name(request.name)
                    if record is None:
                        raise Aborted(f"volume {request.name!r} is being created and deleted"
                                      ) from None
            conflict = _conflict(record, parameters, spec.cache_capacity, required, limit)
            if conflict:
                raise AlreadyExists(f"volume {request.name!r} exists with {conflict}")
        return csi_pb2.CreateVolumeResponse(volume=_volume(record))

    def DeleteVolume(self, request):
        validate.volume_id(request)
        with self._inflight.hold(request.volume_id):
            deleted = self._store.delete(request.volume_id)
        self._log.info("volume.deleted" if deleted else "volume.already_gone",
                       volume_id=request.volume_id)
        return csi_pb2.DeleteVolumeResponse()

    def ValidateVolumeCapabilities(self, request):
        validate.volume_id(request)
        require(request, "volume_capabilities")
        record = self._store.get(request.volume_id)
        if record is None:
            raise NotFound(f"volume {request.volume_id} does not exist")
        message = validate.capabilities_problem(request.volume_capabilities)
        if not message and request.parameters:
            try:
                spec = self._resolve(parse_parameters(dict(request.parameters)))
            except InvalidArgument as e:
                message = str(e)
            else:
                conflict = _conflict(record, spec.to_parameters(), spec.cache_capacity, 0, 0)
                message = f"the volume was created with {conflict}" if conflict else ""
        if message:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message=message)
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters,
        )
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    def ListVolumes(self, request):
        if request.max_entries < 0:
            raise InvalidArgument(f"max_entries {request.max_entries} is negative")
        token = request.starting_token
        # A token is the last volume id of the previous page: any well-formed id is a valid
        # cursor, even after that volume is deleted, and anything else was not issued by us.
        if token and not VOLUME_ID.match(token):
            raise Aborted(f"starting_token {token!r} was not issued by this controller")
        limit = request.max_entries
        records = self._store.list(after=token or None, limit=limit + 1 if limit else 0)
        more = bool(limit) and len(records) > limit
        page = records[:limit] if more else records
        return csi_pb2.ListVolumesResponse(
            entries=[csi_pb2.ListVolumesResponse.Entry(volume=_volume(r)) for r in page],
            next_token=page[-1].volume_id if more else "",
        )

    def GetCapacity(self, request):
        if request.parameters:
            parse_parameters(dict(request.parameters))
        if validate.capabilities_problem(request.volume_capabilities):
            return csi_pb2.GetCapacityResponse(available_capacity=0)
        available = self._capacity() if self._capacity else 0
        return csi_pb2.GetCapacityResponse(available_capacity=available)

    def ControllerGetCapabilities(self, request):
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=[
            csi_pb2.ControllerServiceCapability(rpc=RPC(type=kind)) for kind in CAPABILITIES
        ])


def _volume(record: VolumeRecord) -> csi_pb2.Volume:
    return csi_pb2.Volume(volume_id=record.volume_id, capacity_bytes=record.capacity_bytes,
                          volume_context=record.parameters)


def _capacity_range(request) -> tuple[int, int]:
    required = request.capacity_range.required_bytes
    limit = request.capacity_range.limit_bytes
    if required < 0 or limit < 0:
        raise InvalidArgument("capacity_range: required_bytes and limit_bytes must not be negative")
    if limit and limit < required:
        raise InvalidArgument(f"capacity_range: limit_bytes {limit} is below "
                              f"required_bytes {required}")
    return required, limit


def _settle_capacity(explicit: int | None, required: int, limit: int) -> int:
    """The dataset's cache capacity in bytes (0 = bounded only by the node's tiers).

    An explicit `cacheCapacity` must satisfy the capacity range; otherwise the range decides,
    raised to the smallest cache capacity when the limit allows it.
    """
    if explicit is not None:
        if explicit < required or (limit and explicit > limit):
            raise OutOfRange(f"parameter 'cacheCapacity' {format_bytes(explicit)} is outside "
                             f"capacity_range [{required}, {limit or 'unbounded'}]")
        return explicit
    capacity = required or limit
    if 0 < capacity < MIN_CACHE_CAPACITY:
        if limit and limit < MIN_CACHE_CAPACITY:
            raise OutOfRange(f"capacity_range limit_bytes {limit} is below the smallest cache "
                             f"capacity, {format_bytes(MIN_CACHE_CAPACITY)}")
        capacity = MIN_CACHE_CAPACITY
    return capacity


def _conflict(record: VolumeRecord, parameters: dict[str, str], explicit: int | None,
              required: int, limit: int) -> str:
    """Why `record` cannot answer a request for these parameters and range ("" if it can)."""
    def dataset(params: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in params.items() if k != "cacheCapacity"}

    if dataset(record.parameters) != dataset(parameters):
        return "different parameters"
    capacity = record.capacity_bytes
    if explicit is not None and capacity != explicit:
        return f"a different cacheCapacity ({capacity} bytes)"
    if capacity < required or (limit and capacity > limit):
        return f"an incompatible capacity ({capacity} bytes)"
    return ""
