"""Volume parameters -> a validated DatasetSpec.

The parameter names are a contract (StorageClass `parameters`, inline `volumeAttributes`,
`eddy mount --param`); see DESIGN.md. Every unknown key and every bad value is refused with
InvalidParameter naming the key. Keys under the reserved `csi.storage.k8s.io/` prefix, which
Kubernetes and the CSI sidecars add, are accepted and kept out of the dataset definition.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from eddy.base.errors import InvalidParameter

RESERVED_PREFIX = "csi.storage.k8s.io/"
SOURCE_SCHEMES = ("local", "s3", "pvc", "nfs", "http", "https")
SECRET_KEYS = ("accessKeyId", "secretAccessKey", "sessionToken")

DEFAULT_BLOCK_SIZE = 4 << 20
MIN_CACHE_CAPACITY = 1 << 20
MAX_CACHE_CAPACITY = (1 << 63) - 1  # CSI capacity_bytes is an int64
MIN_BLOCK_SIZE = 64 << 10
MAX_BLOCK_SIZE = 64 << 20
DEFAULT_METADATA_TTL = 60.0
DEFAULT_READ_AHEAD = 8
MAX_READ_AHEAD = 64

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGTPE]i|[kMGTPE])?$")
_SUFFIX = {
    None: 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
}
_TIER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
# S3 bucket names: 3-63 chars of lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^[0-9]+(\.[0-9]+){3}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def parse_quantity(text: str) -> int:
    """Bytes in a Kubernetes-style quantity ("20Gi", "500M", "4096"); ValueError if malformed."""
    m = _QUANTITY.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a size such as 4Mi, 20Gi or 1000000")
    number, suffix = m.groups()
    value = float(number) * _SUFFIX[suffix] if "." in number else int(number) * _SUFFIX[suffix]
    return int(value)


def format_bytes(n: int) -> str:
    """Human-readable binary size: 1.5GiB, 512MiB, 0B."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class Source:
    """A parsed `source` parameter. `root` is the path inside the scheme's namespace."""

    scheme: str
    uri: str
    bucket: str = ""  # s3 bucket, pvc namespace, or nfs server
    root: str = ""  # local: absolute dir; s3: key prefix; pvc: name[/subdir]; nfs: absolute
    #                 export path (the node mounts it); http(s): full URL


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
            out["preload"] = ",".join(self.preload)
        out["metadataTTL"] = _format_ttl(self.metadata_ttl)
        out["readAhead"] = str(self.read_ahead)
        return out

    def as_dict(self) -> dict:
        return asdict(self)


def _format_ttl(ttl: float | None) -> str:
    """Exact, so that parsing the canonical parameters gives back the same spec."""
    if ttl is None:
        return "immutable"
    return str(int(ttl)) if ttl == int(ttl) else repr(ttl)


def parse_source(value: str, key: str = "source") -> Source:
    """Validate a source URI; the error names `key` and what is wrong."""
    if not value:
        raise InvalidParameter(key, "is required (e.g. s3://bucket/prefix or local:///data)")
    if _CONTROL.search(value):
        raise InvalidParameter(key, "must not contain control characters")
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in SOURCE_SCHEMES:
        raise InvalidParameter(
            key, f"unsupported URL scheme {parts.scheme!r} (use one of {', '.join(SOURCE_SCHEMES)})"
        )
    if parts.username or parts.password:
        raise InvalidParameter(key, "must not contain credentials; use the node-stage secret")
    if (parts.query or parts.fragment) and scheme not in ("http", "https"):
        raise InvalidParameter(key, "must not have a query or fragment")
    raw_path = parts.path
    if any(seg == ".." for seg in raw_path.split("/")):
        raise InvalidParameter(key, "path must not contain '..'")
    if scheme == "local":
        if parts.netloc:
            raise InvalidParameter(key, "local sources are local:///absolute/path (three slashes)")
        if not raw_path.startswith("/"):
            raise InvalidParameter(key, "local path must be absolute (local:///abs/dir)")
        root = "/" + posixpath.normpath(raw_path).lstrip("/")  # normpath keeps a leading "//"
        return Source("local", f"local://{root}", root=root)
    if scheme == "s3":
        bucket = parts.netloc
        if not bucket:
            raise InvalidParameter(key, "is missing the bucket (s3://bucket/prefix)")
        if not _BUCKET.match(bucket) or ".." in bucket or _IPV4.match(bucket):
            raise InvalidParameter(key, f"{bucket!r} is not a valid S3 bucket name")
        prefix = posixpath.normpath(raw_path).strip("/") if raw_path.strip("/") else ""
        uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        return Source("s3", uri, bucket=bucket, root=prefix)
    if scheme == "pvc":
        namespace = parts.netloc
        segs = [s for s in raw_path.split("/") if s]
        if not namespace or not segs:
            raise InvalidParameter(key, "pvc sources are pvc://namespace/name[/subdir]")
        for name in (namespace, segs[0]):
            if not _K8S_NAME.match(name):
                raise InvalidParameter(key, f"{name!r} is not a valid Kubernetes name")
        root = "/".join(segs)
        return Source("pvc", f"pvc://{namespace}/{root}", bucket=namespace, root=root)
    if scheme == "nfs":
        return _parse_nfs(key, parts.netloc, parts.hostname, raw_path)
    # http / https
    if not parts.hostname:
        raise InvalidParameter(key, "is missing the host (https://host/path)")
    return Source(scheme, value, root=value)


def _parse_nfs(key: str, netloc: str, host: str | None, raw_path: str) -> Source:
    """nfs://server/export/path: what a pvc:// source on an NFS PersistentVolume becomes."""
    if not host or not netloc or ":" in netloc.rsplit("]", 1)[-1]:
        raise InvalidParameter(key, "nfs sources are nfs://server/export/path (no port)")
    if not raw_path.startswith("/"):
        raise InvalidParameter(key, "nfs sources need the export path (nfs://server/export)")
    root = "/" + posixpath.normpath(raw_path).lstrip("/")
    return Source("nfs", f"nfs://{netloc}{root}", bucket=netloc, root=root)


def _parse_endpoint(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameter("endpoint", f"{value!r} is not an http(s):// URL")
    if parts.username or parts.password:
        raise InvalidParameter("endpoint", "must not contain credentials")
    return value.rstrip("/")


def _parse_size(key: str, value: str, low: int, high: int | None = None) -> int:
    try:
        n = parse_quantity(value)
    except ValueError as e:
        raise InvalidParameter(key, str(e)) from None
    if n < low:
        raise InvalidParameter(key, f"{value} is below the minimum of {format_bytes(low)}")
    if high is not None and n > high:
        raise InvalidParameter(key, f"{value} is above the maximum of {format_bytes(high)}")
    return n


def _parse_int(key: str, value: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidParameter(key, f"{value!r} is not an integer") from None
    if not low <= n <= high:
        raise InvalidParameter(key, f"{n} is outside {low}..{high}")
    return n


def _parse_tiers(value: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in value.split(","))
    for name in names:
        if not _TIER_NAME.match(name):
            raise InvalidParameter("tiers", f"{name!r} is not a tier name (e.g. MEM,SSD)")
    if len(set(names)) != len(names):
        raise InvalidParameter("tiers", "lists a tier twice")
    return names


def _parse_preload(value: str) -> tuple[str, ...] | bool:
    low = value.strip().lower()
    if low in ("", "false", "no", "0"):
        return False
    if low in ("true", "yes", "1", "all"):
        return True
    paths = []
    for p in value.split(","):
        p = p.strip().strip("/")
        if not p:
            continue
        if any(seg == ".." for seg in p.split("/")):
            raise InvalidParameter("preload", f"path {p!r} must not contain '..'")
        paths.append(p)
    return tuple(paths)


def _parse_ttl(value: str) -> float | None:
    if value.strip().lower() == "immutable":
        return None
    try:
        ttl = float(value)
    except ValueError:
        raise InvalidParameter(
            "metadataTTL", f"{value!r} is neither seconds nor 'immutable'"
        ) from None
    if not 0 <= ttl <= 365 * 86400:
        raise InvalidParameter("metadataTTL", f"{value} is outside 0..31536000 seconds")
    return ttl


def parse_parameters(params: dict[str, str]) -> DatasetSpec:
    """Validate volume parameters; reserved `csi.storage.k8s.io/` keys are kept aside."""
    dataset = {k: v for k, v in params.items() if not k.startswith(RESERVED_PREFIX)}
    extra = {k: v for k, v in params.items() if k.startswith(RESERVED_PREFIX)}
    for key in SECRET_KEYS:
        if key in dataset:
            raise InvalidParameter(key, "credentials belong in the node-stage secret, not here")
    known = {"source", "endpoint", "region", "cacheCapacity", "tiers", "blockSize", "preload",
             "metadataTTL", "readAhead"}
    for key in sorted(dataset):
        if key not in known:
            raise InvalidParameter(key, f"unknown parameter (known: {', '.join(sorted(known))})")
    source = parse_source(dataset.get("source", ""))
    kwargs: dict = {"source": source, "extra": extra}
    if "endpoint" in dataset:
        if source.scheme != "s3":
            raise InvalidParameter("endpoint", "only applies to s3:// sources")
        kwargs["endpoint"] = _parse_endpoint(dataset["endpoint"])
    if "region" in dataset:
        if not re.match(r"^[a-z0-9-]{1,32}$", dataset["region"]):
            raise InvalidParameter("region", f"{dataset['region']!r} is not a region name")
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
            raise InvalidParameter("blockSize", f"{dataset['blockSize']} is not a power of two")
        kwargs["block_size"] = bs
    if "preload" in dataset:
        kwargs["preload"] = _parse_preload(dataset["preload"])
    if "metadataTTL" in dataset:
        kwargs["metadata_ttl"] = _parse_ttl(dataset["metadataTTL"])
    if "readAhead" in dataset:
        kwargs["read_ahead"] = _parse_int("readAhead", dataset["readAhead"], 0, MAX_READ_AHEAD)
    return DatasetSpec(**kwargs)


def parse_secrets(secrets: dict[str, str]) -> dict[str, str]:
    """Keep the known credential keys; refuse a half-given key pair."""
    unknown = sorted(set(secrets) - set(SECRET_KEYS))
    if unknown:
        raise InvalidParameter(
            unknown[0], f"unknown secret key (known: {', '.join(SECRET_KEYS)})"
        )
    if bool(secrets.get("accessKeyId")) != bool(secrets.get("secretAccessKey")):
        raise InvalidParameter("secretAccessKey", "accessKeyId and secretAccessKey go together")
    return {k: v for k, v in secrets.items() if v}
