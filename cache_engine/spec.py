"""Volume parameters -> a validated DatasetSpec.

The parameter names are a contract (StorageClass `parameters`, inline `volumeAttributes`,
`eddy mount --param`); see DESIGN.md. Every unknown key and every bad value is refused with
InvalidParameter naming the key. Keys under the reserved `csi.storage.k8s.io/` prefix, which
Kubernetes and the CSI sidecars add, are accepted and kept out of the dataset definition.
Sizes are bounded before anything is parsed (README "Volume parameters"): at most 64 keys, a key
of 256 bytes, a value of 4 KiB (64 KiB under the reserved prefix: kubelet's service account
tokens), a secret value of 16 KiB, a path component of 255 bytes; no control characters.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from eddy.base.errors import InvalidArgument, InvalidParameter
from eddy.base.limits import cut, shown, text_problem

from .quantity import format_bytes, parse_quantity
from .source import MAX_VALUE_BYTES, Source, checked_path, parse_endpoint, parse_source

RESERVED_PREFIX = "csi.storage.k8s.io/"
SECRET_KEYS = ("accessKeyId", "secretAccessKey", "sessionToken")

DEFAULT_BLOCK_SIZE = 4 << 20
MIN_CACHE_CAPACITY = 1 << 20
MAX_CACHE_CAPACITY = (1 << 63) - 1  # CSI capacity_bytes is an int64
MIN_BLOCK_SIZE = 64 << 10
MAX_BLOCK_SIZE = 64 << 20
DEFAULT_METADATA_TTL = 60.0
DEFAULT_READ_AHEAD = 8
MAX_READ_AHEAD = 64
# A block read from the source that takes longer fails that read (ETIMEDOUT); a mount's
# engine call waits up to client.LOCATE_TIMEOUT (300 s), so the longest allowed stays below.
DEFAULT_SOURCE_TIMEOUT = 60.0
MIN_SOURCE_TIMEOUT = 0.1
MAX_SOURCE_TIMEOUT = 240.0
METADATA_TIMEOUT = 20.0  # stat and list wait at most this (below client.CALL_TIMEOUT, 30 s)
DEFAULT_SOURCE_CONCURRENCY = 8  # source operations of one dataset in flight at once
MAX_SOURCE_CONCURRENCY = 64
MAX_PARAMETERS = 64  # keys in one parameter map, reserved keys included
MAX_KEY_BYTES = 256
MAX_RESERVED_VALUE_BYTES = 64 << 10  # kubelet's csi.storage.k8s.io/serviceAccount.tokens
MAX_SECRET_BYTES = 16 << 10  # STS session tokens run to a few KiB
PRELOAD_ALL = ("true", "yes", "1", "all")
PRELOAD_NONE = ("", "false", "no", "0")
# Whole-file prefetch at a file's first read, least to most generous (`dataset.shared_spec`).
PREFETCH_MODES = ("off", "safetensors", "whole")
# Seconds an open of a file that `prefetch` loads whole waits for it (then the kernel reads
# the tier's copy itself); 0: never. A mount setting, as those below.
DEFAULT_PREFETCH_WAIT = 60.0
MAX_PREFETCH_WAIT = 600.0
# How files look, not what they hold: the mount applies these, the engine never needs them.
OWNER_KEYS = ("uid", "gid", "fileMode", "dirMode")
# Which opens bypass the kernel's page cache (README "Volume parameters"): `cold`, those of a
# file the cache does not hold whole yet; `off`, none. A mount setting too.
DIRECT_IO_MODES = ("cold", "off")
MOUNT_KEYS = (*OWNER_KEYS, "directIO", "prefetchWait")
MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "no change" to chown(2): never an owner

_TIER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
_OCTAL_MODE = re.compile(r"^(?:0o)?([0-7]{1,4})$")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset definition: what to read and how to cache it."""

    source: Source
    endpoint: str = ""
    region: str = ""
    cache_capacity: int | None = None  # bytes; None = bounded by the tiers only
    tiers: tuple[str, ...] = ()  # empty = every node tier
    block_size: int = DEFAULT_BLOCK_SIZE
    preload: tuple[str, ...] | bool = False
    metadata_ttl: float | None = DEFAULT_METADATA_TTL  # None = immutable
    read_ahead: int = DEFAULT_READ_AHEAD
    # Owner and permission bits every entry shows (None: the source's, where it has them,
    # else uid/gid 0, files 0444, directories 0555). README "Permissions".
    uid: int | None = None
    gid: int | None = None
    file_mode: int | None = None
    dir_mode: int | None = None
    source_timeout: float = DEFAULT_SOURCE_TIMEOUT  # seconds a block read may take
    source_concurrency: int = DEFAULT_SOURCE_CONCURRENCY  # source operations in flight
    prefetch: str = "off"  # one of PREFETCH_MODES (README "Volume parameters")
    direct_io: str = "cold"  # one of DIRECT_IO_MODES
    prefetch_wait: float = DEFAULT_PREFETCH_WAIT  # seconds
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def to_parameters(self) -> dict[str, str]:
        """The canonical parameter dict this spec came from (for volume_context)."""
        out = {"source": self.source.uri}
        if self.endpoint:
            out["endpoint"] = self.endpoint
        if self.region:
            out["region"] = self.region
        if self.cache_capacity is not None:
            out["cacheCapacity"] = str(self.cache_capacity)
        if self.tiers:
            out["tiers"] = ",".join(self.tiers)
        out["blockSize"] = str(self.block_size)
        if self.preload is True:
            out["preload"] = "true"
        elif self.preload:
            listed = ",".join(self.preload)
            # One path named like a keyword ("true", "0") must not read back as the keyword.
            keyword = listed.strip().lower() in PRELOAD_ALL + PRELOAD_NONE
            out["preload"] = "/" + listed if keyword else listed
        out["metadataTTL"] = _format_ttl(self.metadata_ttl)
        out["readAhead"] = str(self.read_ahead)
        if self.source_timeout != DEFAULT_SOURCE_TIMEOUT:
            out["sourceTimeout"] = _format_seconds(self.source_timeout)
        if self.source_concurrency != DEFAULT_SOURCE_CONCURRENCY:
            out["sourceConcurrency"] = str(self.source_concurrency)
        if self.prefetch != "off":  # as the timeouts: an engine that predates it would refuse
            out["prefetch"] = self.prefetch
        if self.direct_io != "cold":
            out["directIO"] = self.direct_io
        if self.prefetch_wait != DEFAULT_PREFETCH_WAIT:
            out["prefetchWait"] = _format_seconds(self.prefetch_wait)
        owner = (self.uid, self.gid, self.file_mode, self.dir_mode)
        for key, value in zip(OWNER_KEYS, owner, strict=True):
            if value is not None:
                out[key] = str(value) if key in ("uid", "gid") else f"{value:04o}"
        return out

    def engine_parameters(self) -> dict[str, str]:
        """`to_parameters` without the mount's keys: the engine caches bytes, the mount shows
        owners and opens files, and an engine that predates those keys would refuse them."""
        return {k: v for k, v in self.to_parameters().items() if k not in MOUNT_KEYS}

    @property
    def metadata_timeout(self) -> float:
        """Seconds a stat or list of the source may take: less than a block read."""
        return min(self.source_timeout, METADATA_TIMEOUT)

    def as_dict(self) -> dict:
        return asdict(self)


def _format_ttl(ttl: float | None) -> str:
    """Exact, so that parsing the canonical parameters gives back the same spec."""
    return "immutable" if ttl is None else _format_seconds(ttl)


def prefetch_covers(mode: str, path: str) -> bool:
    """Whether a `prefetch` mode loads this file whole (if it has 2+ blocks)."""
    return mode == "whole" or (mode == "safetensors" and path.lower().endswith(".safetensors"))


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)


def _parse_size(key: str, value: str, low: int, high: int | None = None) -> int:
    try:
        n = parse_quantity(value)
    except ValueError as e:
        raise InvalidParameter(key, str(e)) from None
    if n < low:
        raise InvalidParameter(key, f"{shown(value)} is below the minimum of {format_bytes(low)}")
    if high is not None and n > high:
        raise InvalidParameter(key, f"{shown(value)} is above the maximum of {format_bytes(high)}")
    return n


def _parse_int(key: str, value: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidParameter(key, f"{shown(value)} is not an integer") from None
    if not low <= n <= high:
        raise InvalidParameter(key, f"{n} is outside {low}..{high}")
    return n


def _parse_id(key: str, value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise InvalidParameter(key, f"{shown(value)} is not a numeric id (e.g. 1000)")
    return _parse_int(key, value, 0, MAX_ID)


def _parse_mode(key: str, value: str) -> int:
    m = _OCTAL_MODE.fullmatch(value)
    if not m:
        raise InvalidParameter(key, f"{shown(value)} is not an octal mode (e.g. 0644)")
    mode = int(m.group(1), 8)
    if mode > 0o777:
        raise InvalidParameter(key, f"{shown(value)} is outside 0000..0777 (no setuid, setgid "
                                    "or sticky bit)")
    return mode


def _parse_tiers(value: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in value.split(","))
    for name in names:
        if not _TIER_NAME.fullmatch(name):
            raise InvalidParameter("tiers", f"{shown(name)} is not a tier name (e.g. MEM,SSD)")
    if len(set(names)) != len(names):
        raise InvalidParameter("tiers", "lists a tier twice")
    return names


def _parse_preload(value: str) -> tuple[str, ...] | bool:
    low = value.strip().lower()
    if low in PRELOAD_NONE:
        return False
    if low in PRELOAD_ALL:
        return True
    paths = []
    for p in value.split(","):
        p = p.strip().strip("/")
        if not p:
            continue
        if any(seg == ".." for seg in p.split("/")):
            raise InvalidParameter("preload", f"path {shown(p)} must not contain '..'")
        paths.append(checked_path("preload", p))
    return tuple(paths) or False  # "," or "/" lists nothing: the same as no preload


def _parse_ttl(value: str) -> float | None:
    if value.strip().lower() == "immutable":
        return None
    try:
        ttl = float(value)
    except ValueError:
        raise InvalidParameter(
            "metadataTTL", f"{shown(value)} is neither seconds nor 'immutable'"
        ) from None
    if not 0 <= ttl <= 365 * 86400:
        raise InvalidParameter("metadataTTL", f"{shown(value)} is outside 0..31536000 seconds")
    return ttl


def _parse_seconds(key: str, value: str, low: float, high: float) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise InvalidParameter(key, f"{shown(value)} is not seconds") from None
    if not low <= seconds <= high:
        raise InvalidParameter(key, f"{shown(value)} is outside {low:g}..{high:g} seconds")
    return seconds


def _parse_mode_word(key: str, value: str, modes: tuple[str, ...]) -> str:
    mode = value.strip().lower()
    if mode not in modes:
        raise InvalidParameter(key, f"{shown(value)} is not one of {', '.join(modes)}")
    return mode


def check_limits(params: dict[str, str]) -> None:
    """Refuse a parameter map (or volume context) with too many keys, or with a key or value
    that is too long or holds a control character; the message names the key."""
    if len(params) > MAX_PARAMETERS:
        raise InvalidArgument(f"parameters: {len(params)} keys, over the limit of "
                              f"{MAX_PARAMETERS}")
    for key in sorted(params):
        problem = text_problem(key, MAX_KEY_BYTES) if key else "is empty"
        if problem:
            raise InvalidParameter(cut(key), f"key {problem}")
        limit = MAX_RESERVED_VALUE_BYTES if key.startswith(RESERVED_PREFIX) else MAX_VALUE_BYTES
        problem = text_problem(params[key], limit)
        if problem:
            raise InvalidParameter(key, f"value {problem}")


def parse_parameters(params: dict[str, str]) -> DatasetSpec:
    """Validate volume parameters; reserved `csi.storage.k8s.io/` keys are kept aside."""
    check_limits(params)
    dataset = {k: v for k, v in params.items() if not k.startswith(RESERVED_PREFIX)}
    extra = {k: v for k, v in params.items() if k.startswith(RESERVED_PREFIX)}
    for key in SECRET_KEYS:
        if key in dataset:
            raise InvalidParameter(key, "credentials belong in the node-stage secret, not here")
    known = {"source", "endpoint", "region", "cacheCapacity", "tiers", "blockSize", "preload",
             "metadataTTL", "readAhead", "sourceTimeout", "sourceConcurrency", "prefetch",
             *MOUNT_KEYS}
    for key in sorted(dataset):
        if key not in known:
            raise InvalidParameter(key, f"unknown parameter (known: {', '.join(sorted(known))})")
    source = parse_source(dataset.get("source", ""))
    kwargs: dict = {"source": source, "extra": extra}
    if "endpoint" in dataset:
        if source.scheme != "s3":
            raise InvalidParameter("endpoint", "only applies to s3:// sources")
        kwargs["endpoint"] = parse_endpoint(dataset["endpoint"])
    if "region" in dataset:
        if not re.fullmatch(r"[a-z0-9-]{1,32}", dataset["region"]):
            raise InvalidParameter("region", f"{shown(dataset['region'])} is not a region name")
        kwargs["region"] = dataset["region"]
    if "cacheCapacity" in dataset:
        kwargs["cache_capacity"] = _parse_size(
            "cacheCapacity", dataset["cacheCapacity"], MIN_CACHE_CAPACITY, MAX_CACHE_CAPACITY
        )
    if "tiers" in dataset:
        kwargs["tiers"] = _parse_tiers(dataset["tiers"])
    if "blockSize" in dataset:
        bs = _parse_size("blockSize", dataset["blockSize"], MIN_BLOCK_SIZE, MAX_BLOCK_SIZE)
        if bs & (bs - 1):
            raise InvalidParameter("blockSize",
                                   f"{shown(dataset['blockSize'])} is not a power of two")
        kwargs["block_size"] = bs
    if "preload" in dataset:
        kwargs["preload"] = _parse_preload(dataset["preload"])
    if "metadataTTL" in dataset:
        kwargs["metadata_ttl"] = _parse_ttl(dataset["metadataTTL"])
    if "readAhead" in dataset:
        kwargs["read_ahead"] = _parse_int("readAhead", dataset["readAhead"], 0, MAX_READ_AHEAD)
    if "sourceTimeout" in dataset:
        kwargs["source_timeout"] = _parse_seconds("sourceTimeout", dataset["sourceTimeout"],
                                                  MIN_SOURCE_TIMEOUT, MAX_SOURCE_TIMEOUT)
    if "sourceConcurrency" in dataset:
        kwargs["source_concurrency"] = _parse_int(
            "sourceConcurrency", dataset["sourceConcurrency"], 1, MAX_SOURCE_CONCURRENCY)
    if "prefetch" in dataset:
        kwargs["prefetch"] = _parse_mode_word("prefetch", dataset["prefetch"], PREFETCH_MODES)
    if "prefetchWait" in dataset:
        kwargs["prefetch_wait"] = _parse_seconds("prefetchWait", dataset["prefetchWait"], 0,
                                                 MAX_PREFETCH_WAIT)
    if "directIO" in dataset:
        kwargs["direct_io"] = _parse_mode_word("directIO", dataset["directIO"], DIRECT_IO_MODES)
    for key, name in zip(OWNER_KEYS, ("uid", "gid", "file_mode", "dir_mode"), strict=True):
        if key in dataset:
            parse = _parse_id if name in ("uid", "gid") else _parse_mode
            kwargs[name] = parse(key, dataset[key])
    return DatasetSpec(**kwargs)


def parse_secrets(secrets: dict[str, str]) -> dict[str, str]:
    """Keep the known credential keys; refuse a half-given key pair. A value is never shown."""
    unknown = sorted(set(secrets) - set(SECRET_KEYS))
    if unknown:
        raise InvalidParameter(
            cut(unknown[0]), f"unknown secret key (known: {', '.join(SECRET_KEYS)})"
        )
    for key in SECRET_KEYS:
        problem = text_problem(secrets.get(key, ""), MAX_SECRET_BYTES)
        if problem:
            raise InvalidParameter(key, f"secret value {problem}")
    if bool(secrets.get("accessKeyId")) != bool(secrets.get("secretAccessKey")):
        raise InvalidParameter("secretAccessKey", "accessKeyId and secretAccessKey go together")
    return {k: v for k, v in secrets.items() if v}
