"""A stand-in for the Kubernetes API at the client's method boundary, for tests without a cluster.

`FakeCoreApi` has the `CoreV1Api` methods eddy calls, with their signatures, and answers the
way the API server does: it takes and returns the kubernetes client's own models (objects go
through the client's JSON serialisation both ways, as over the wire), raises the client's
own `ApiException` with the server's status codes, assigns uids and resourceVersions, honours
delete preconditions and paginates lists with continue tokens. Objects come from YAML files
(`load_models`), through the client's models too.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

MODELS = {"PersistentVolume": client.V1PersistentVolume,
          "PersistentVolumeClaim": client.V1PersistentVolumeClaim,
          "ConfigMap": client.V1ConfigMap}


def load_models(path: Path) -> list:
    """Every document of a YAML file as the client's model for its kind."""
    with open(path) as f:
        return [MODELS[doc["kind"]].from_dict(doc) for doc in yaml.safe_load_all(f) if doc]


def _wire(obj):
    """`obj` as the API server would return it: serialised and parsed back into a new model."""
    return type(obj).from_dict(client.ApiClient().sanitize_for_serialization(obj))


def _error(status: int, reason: str) -> ApiException:
    return ApiException(status=status, reason=reason)


class FakeCoreApi:
    def __init__(self, objects=()) -> None:
        self._lock = threading.Lock()
        self._versions = itertools.count(1000)
        self.claims: dict[tuple[str, str], object] = {}
        self.volumes: dict[str, object] = {}
        self.config_maps: dict[tuple[str, str], object] = {}
        for obj in objects:
            self.add(obj)

    def add(self, obj) -> None:
        meta = obj.metadata
        if isinstance(obj, client.V1PersistentVolume):
            self.volumes[meta.name] = obj
        elif isinstance(obj, client.V1PersistentVolumeClaim):
            self.claims[(meta.namespace, meta.name)] = obj
        else:
            self.config_maps[(meta.namespace, meta.name)] = obj

    # -- persistent volumes and claims (read only) ------------------------------------------------

    def read_namespaced_persistent_volume_claim(self, name, namespace, **kwargs):
        return self._get(self.claims, (namespace, name))

    def read_persistent_volume(self, name, **kwargs):
        return self._get(self.volumes, name)

    # -- config maps --------------------------------------------------------------------------

    def create_namespaced_config_map(self, namespace, body, **kwargs):
        obj = _wire(body)
        with self._lock:
            if (namespace, obj.metadata.name) in self.config_maps:
                raise _error(409, "AlreadyExists")
            obj.metadata.namespace = namespace
            obj.metadata.uid = str(uuid.uuid4())
            obj.metadata.resource_version = str(next(self._versions))
            self.config_maps[(namespace, obj.metadata.name)] = obj
        return _wire(obj)

    def read_namespaced_config_map(self, name, namespace, **kwargs):
        return self._get(self.config_maps, (namespace, name))

    def list_namespaced_config_map(self, namespace, label_selector=None, limit=None,
                                   _continue=None, **kwargs):
        wanted = dict(term.split("=", 1) for term in (label_selector or "").split(",") if term)
        with self._lock:
            items = sorted((o for (ns, _), o in self.config_maps.items() if ns == namespace
                            and wanted.items() <= (o.metadata.labels or {}).items()),
                           key=lambda o: o.metadata.name)
        start = int(_continue or 0)
        end = start + limit if limit else len(items)
        token = str(end) if end < len(items) else None
        return client.V1ConfigMapList(
            items=[_wire(o) for o in items[start:end]],
            metadata=client.V1ListMeta.from_dict({"continue": token} if token else {}))

    def delete_namespaced_config_map(self, name, namespace, body=None, **kwargs):
        with self._lock:
            obj = self.config_maps.get((namespace, name))
            if obj is None:
                raise _error(404, "NotFound")
            pre = body.preconditions if body is not None else None
            if pre is not None and (pre.uid not in (None, obj.metadata.uid) or
                                    pre.resource_version not in
                                    (None, obj.metadata.resource_version)):
                raise _error(409, "Conflict")  # what the server answers to a failed precondition
            del self.config_maps[(namespace, name)]
        return client.V1Status(status="Success")

    def _get(self, table, key):
        with self._lock:
            obj = table.get(key)
        if obj is None:
            raise _error(404, "NotFound")
        return _wire(obj)

