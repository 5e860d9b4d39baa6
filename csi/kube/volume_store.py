"""Controller volume records as ConfigMaps, so that several controller replicas share them.

`--state-store kubernetes` keeps one ConfigMap per volume in the controller's namespace instead
of SQLite in a pod-local directory, which a rescheduled controller would lose (and with it the
CreateVolume-by-name idempotency). The ConfigMap's name is derived from the CreateVolume name
(`eddy-vol-` + 32 hex digits of its SHA-256), so the API server's create, atomic per name, makes
the name unique across replicas: the loser of a race gets 409, i.e. AlreadyExists, which
CreateVolume already answers by reading the winner's record. A label carries the volume id for
lookups by id. Records never change after create; a delete carries the uid and resourceVersion
of the object it read as preconditions (optimistic concurrency), so a stale delete can never
remove a record that was deleted and created again meanwhile.

    metadata.name   eddy-vol-<sha256(name)[:32]>
    labels          app.kubernetes.io/managed-by=eddy, eddy.csi.io/record=volume,
                    eddy.csi.io/volume-id=<volume id>
    data            name, volumeId, parameters (JSON), capacityBytes, createdAt
"""

from __future__ import annotations

import hashlib
import json
import re

from eddy.base import log
from eddy.base.errors import Aborted, InvalidArgument, NotFound, Unavailable
from eddy.base.limits import shown

from ..state.volumes import VolumeRecord, VolumeStore
from .api import REQUEST_TIMEOUT, LazyCoreApi, api_errors

PREFIX = "eddy-vol-"
RECORD_LABEL = "eddy.csi.io/record"
ID_LABEL = "eddy.csi.io/volume-id"
LABELS = {"app.kubernetes.io/managed-by": "eddy", RECORD_LABEL: "volume"}
PAGE = 500
MAX_DATA = 1 << 20  # bytes of keys and values in a ConfigMap's data (the API server's limit)
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def object_name(volume_name: str) -> str:
    """The ConfigMap name for a CreateVolume name (any string: CSI names are not DNS names)."""
    return PREFIX + hashlib.sha256(volume_name.encode()).hexdigest()[:32]


class KubernetesVolumeStore(VolumeStore):
    """`VolumeStore` over ConfigMaps in `namespace` (see the module docstring for the format)."""

    def __init__(self, api: LazyCoreApi, namespace: str, page_size: int = PAGE) -> None:
        self._api = api
        self.namespace = namespace
        self._page_size = page_size  # records per list request
        self._log = log.get("csi.kube.volume_store")

    def get(self, volume_id: str) -> VolumeRecord | None:
        found = self._find(volume_id)
        return _record(found) if found is not None else None

    def get_by_name(self, name: str) -> VolumeRecord | None:
        try:
            with api_errors(f"reading the record of volume {name!r}"):
                found = self._api.core().read_namespaced_config_map(
                    object_name(name), self.namespace, _request_timeout=REQUEST_TIMEOUT)
        except NotFound:
            return None
        record = _record(found)
        return record if record.name == name else None

    def create(self, record: VolumeRecord) -> None:
        from kubernetes import client

        data = _data(record)
        size = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
        if size > MAX_DATA:  # the API server would answer 422, which is no reason to retry
            raise InvalidArgument(f"volume {shown(record.name)}: its record would take {size} "
                                  f"bytes, over the {MAX_DATA} of a ConfigMap")
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=object_name(record.name),
                                         labels={**LABELS, ID_LABEL: record.volume_id}),
            data=data)
        with api_errors(f"recording volume {record.name!r}"):  # 409 -> AlreadyExists
            self._api.core().create_namespaced_config_map(self.namespace, body,
                                                          _request_timeout=REQUEST_TIMEOUT)

    def delete(self, volume_id: str) -> bool:
        from kubernetes import client

        found = self._find(volume_id)
        if found is None:
            return False
        meta = found.metadata
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(
            uid=meta.uid, resource_version=meta.resource_version))
        try:
            with api_errors(f"deleting the record of volume {volume_id}", conflict=Aborted):
                self._api.core().delete_namespaced_config_map(
                    meta.name, self.namespace, body=options, _request_timeout=REQUEST_TIMEOUT)
        except NotFound:
            return False  # deleted meanwhile by another replica
        return True

    def list(self, after: str | None, limit: int) -> list[VolumeRecord]:
        records = []
        for item in self._list(",".join(f"{k}={v}" for k, v in LABELS.items())):
            try:
                records.append(_record(item))
            except Unavailable as e:
                self._log.warning("volume_record.unreadable", error=str(e))
        records = sorted((r for r in records if not after or r.volume_id > after),
                         key=lambda r: r.volume_id)
        return records[:limit] if limit > 0 else records

    def _find(self, volume_id: str):
        """The ConfigMap recording `volume_id`, or None (ids that cannot be labels never are)."""
        if not _LABEL_VALUE.match(volume_id):
            return None
        items = self._list(f"{RECORD_LABEL}=volume,{ID_LABEL}={volume_id}")
        return items[0] if items else None

    def _list(self, selector: str) -> list:
        items, token = [], None
        while True:
            with api_errors(f"listing volume records in namespace {self.namespace}"):
                page = self._api.core().list_namespaced_config_map(
                    self.namespace, label_selector=selector, limit=self._page_size, _continue=token,
                    _request_timeout=REQUEST_TIMEOUT)
            items.extend(page.items or [])
            token = _continue_token(page.metadata)
            if not token:
                return items


def _continue_token(meta) -> str | None:
    """The list's continue token (`var_continue` in newer clients, `_continue` in older)."""
    if meta is None:
        return None
    return getattr(meta, "var_continue", None) or getattr(meta, "_continue", None)


def _data(record: VolumeRecord) -> dict[str, str]:
    return {"name": record.name, "volumeId": record.volume_id,
            "parameters": json.dumps(record.parameters, sort_keys=True),
            "capacityBytes": str(record.capacity_bytes), "createdAt": repr(record.created_at)}


def _record(config_map) -> VolumeRecord:
    data = config_map.data or {}
    try:
        return VolumeRecord(data["volumeId"], data["name"], json.loads(data["parameters"]),
                            int(data["capacityBytes"]), float(data["createdAt"]))
    except (KeyError, ValueError, TypeError) as e:
        raise Unavailable(f"ConfigMap {config_map.metadata.name} is not a valid eddy volume "
                          f"record ({type(e).__name__}: {e})") from None
