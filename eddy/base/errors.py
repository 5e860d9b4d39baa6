"""The error kinds every layer raises; the gRPC boundary maps them to status codes.

Domain code (cache_engine, volume state, mounts) raises these or subclasses of them and never
imports grpc. `eddy.base.rpc` holds the single table from these classes to gRPC codes.
Messages are shown to users: they name the problem (the parameter key, the volume id) and
never contain a secret.
"""


class EddyError(Exception):
    """Base of every error eddy reports on purpose."""


class InvalidArgument(EddyError):
    """A request or parameter is malformed; retrying the same input cannot succeed."""


class InvalidParameter(InvalidArgument):
    """A volume parameter is unknown or has a bad value; the message names the key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"parameter {key!r}: {problem}")


class NotFound(EddyError):
    """The named volume, file or dataset does not exist."""


class AlreadyExists(EddyError):
    """A resource with this name exists and is incompatible with the request."""


class Aborted(EddyError):
    """Another operation on the same object is in flight; the caller should retry later."""


class FailedPrecondition(EddyError):
    """The system is not in a state where the call can proceed (e.g. still published)."""


class ResourceExhausted(EddyError):
    """A limit was reached (node volume count, cache capacity)."""


class Unavailable(EddyError):
    """A dependency (the source, the cache engine) cannot be reached right now."""


class OutOfRange(EddyError):
    """A requested size or range is outside what is supported."""
