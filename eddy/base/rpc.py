"""The one place where eddy's errors become gRPC status codes, and every RPC is logged.

A servicer subclasses `Servicer` together with the generated `...Servicer` base; every public
method named like an RPC (CamelCase) is wrapped once:

- the request is logged at debug (info for mutating calls) with secrets removed,
- an `EddyError` becomes `context.abort(code, message)` by the table below; an `OSError` from
  a source becomes its code too, with its errno in the trailing metadata key `eddy-errno`, so a
  mount daemon can answer the kernel with the same errno; every such error also carries
  `eddy-error` (its class name), which a connection failure never has; a message is cut to
  1 KiB (gRPC would drop a call whose status does not fit its metadata limit) and shows no
  URL's query string (`eddy.base.uris`),
- anything else becomes INTERNAL with one logged traceback.

Called without a context (plain unit tests), the wrapped method returns or raises as written.
"""

from __future__ import annotations

import functools
import logging
import os
import time

import grpc
from google.protobuf.json_format import MessageToDict

from eddy.base import errors, log
from eddy.base.limits import bounded
from eddy.base.sockets import born_private, claim_socket_path
from eddy.base.uris import scrub_uris

# Ordered: the first matching class wins, so subclasses come before their bases.
ERROR_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (FileNotFoundError, grpc.StatusCode.NOT_FOUND),
    (PermissionError, grpc.StatusCode.PERMISSION_DENIED),
    (OSError, grpc.StatusCode.UNAVAILABLE),
)
ERRNO_KEY = "eddy-errno"
# Set on every error a servicer raised on purpose, so a client can tell "the server said
# UNAVAILABLE" (a source is down) from "there is no server" (a connection failure).
ERROR_KEY = "eddy-error"

# Calls that only read state are logged at debug; they are frequent (probes, stats).
QUIET_CALLS = frozenset({
    "Stat", "List", "Locate", "Probe", "GetPluginInfo", "GetPluginCapabilities",
    "NodeGetCapabilities", "NodeGetInfo",
    "ControllerGetCapabilities", "NodeGetVolumeStats", "ListVolumes", "GetCapacity",
})


def status_code_of(exc: Exception) -> grpc.StatusCode:
    for cls, code in ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _request_fields(request) -> dict:
    try:
        fields = MessageToDict(request, preserving_proto_field_name=True)
    except Exception:  # pragma: no cover - a non-proto request in a unit test
        return {}
    return log.redact(fields)


def _wrap(name: str, method):
    @functools.wraps(method)
    def rpc(self, request, context=None):
        logger = log.get("rpc").bind(rpc=name)
        level = logging.DEBUG if name in QUIET_CALLS else logging.INFO
        if logger.is_enabled_for(level):  # the read path must not pay for formatting
            logger.log(level, "rpc.start", request=_request_fields(request))
        start = time.monotonic()
        try:
            response = method(self, request)
        except (errors.EddyError, OSError) as e:
            code = status_code_of(e)
            if logger.is_enabled_for(level):
                logger.log(level, "rpc.error", code=code.name, error=str(e),
                           duration=round(time.monotonic() - start, 4))
            if context is None:
                raise
            metadata = [(ERROR_KEY, type(e).__name__)]
            if isinstance(e, OSError) and e.errno:
                metadata.append((ERRNO_KEY, str(e.errno)))
            context.set_trailing_metadata(tuple(metadata))
            context.abort(code, bounded(scrub_uris(str(e))))
        except Exception as e:
            logger.exception("rpc.internal_error", duration=round(time.monotonic() - start, 4))
            if context is None:
                raise
            context.abort(grpc.StatusCode.INTERNAL,
                          bounded(scrub_uris(f"internal error in {name}: {e}")))
        if logger.is_enabled_for(level):
            logger.log(level, "rpc.done", duration=round(time.monotonic() - start, 4))
        return response

    return rpc


class Servicer:
    """Mixin that wraps each CamelCase method of a servicer as described above."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if callable(value) and name[:1].isupper() and not getattr(value, "_eddy_rpc", False):
                wrapped = _wrap(name, value)
                wrapped._eddy_rpc = True
                setattr(cls, name, wrapped)


def require(request, *fields: str) -> None:
    """Raise InvalidArgument naming the first empty required field of `request`."""
    for field in fields:
        value = getattr(request, field)
        if hasattr(value, "ByteSize"):
            if not request.HasField(field):
                raise errors.InvalidArgument(f"{field} is required")
        elif not value:
            raise errors.InvalidArgument(f"{field} is required")


def bind_unix(server: grpc.Server, path: str, mode: int = 0o600, group: int | None = None) -> None:
    """Bind `server` to a unix socket at `path`, replacing a stale socket from a crash.

    The socket is born 0600 whatever the process's umask (no moment at which others may
    connect), then given `mode` (0660 with a `group`, for a CO whose sidecars run as that group).
    """
    claim_socket_path(path)
    with born_private():
        server.add_insecure_port(f"unix://{path}")
    if group is not None:
        os.chown(path, -1, group)
    os.chmod(path, mode)
