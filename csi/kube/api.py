"""The driver's one door to the Kubernetes API: a lazily built client and its errors as eddy's.

Only the controller talks to the API (pvc:// resolution, the `kubernetes` volume store); the
node plugin never does, so its ServiceAccount needs no RBAC at all. The client is built on
first use, from the in-cluster ServiceAccount or else a kubeconfig, so `eddy serve --mode all`
starts on a laptop and only the calls that need a cluster fail, with a message saying so.
API failures become eddy errors here (404 -> NotFound, 409 -> AlreadyExists or Aborted,
anything else -> Unavailable), so callers never see `ApiException`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator

from eddy.base.errors import AlreadyExists, NotFound, Unavailable

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
REQUEST_TIMEOUT = 30.0  # seconds, for every API call


class LazyCoreApi:
    """A `CoreV1Api` built on first use; `core()` raises Unavailable when no cluster is known."""

    def __init__(self, factory: Callable[[], object] | None = None) -> None:
        self._factory = factory or _core_v1_api
        self._api = None
        self._lock = threading.Lock()

    def core(self):
        with self._lock:
            if self._api is None:
                self._api = self._factory()
            return self._api


def _core_v1_api():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise Unavailable("the Kubernetes API is not reachable: no in-cluster ServiceAccount "
                              f"and no usable kubeconfig ({e})") from None
    return client.CoreV1Api()


def own_namespace(default: str = "default") -> str:
    """The namespace this pod runs in (its ServiceAccount's), or `default` outside a cluster."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip() or default
    except OSError:
        return os.environ.get("POD_NAMESPACE", default)


@contextlib.contextmanager
def api_errors(what: str, conflict: type[Exception] = AlreadyExists) -> Iterator[None]:
    """Translate API failures of `what` (e.g. "reading PVC ns/name") into eddy errors."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as e:
        reason = f"{e.status} {e.reason}".strip()
        if e.status == 404:
            raise NotFound(f"{what}: not found") from None
        if e.status == 409:
            raise conflict(f"{what}: conflict ({reason})") from None
        if e.status in (401, 403):
            raise Unavailable(f"{what}: the API server refused the driver's ServiceAccount "
                              f"({reason}); check the RBAC in deploy/base") from None
        raise Unavailable(f"{what}: the API server answered {reason}") from None
    except (HTTPError, OSError) as e:  # connection refused, DNS, TLS, timeouts
        raise Unavailable(f"{what}: the API server is not reachable ({e})") from None
