"""Which datasets a pod author may mount as an inline ephemeral volume on this node.

An inline CSI volume (`volumes[].csi` in a Pod) never passes a StorageClass or the controller:
kubelet calls NodePublishVolume straight away, with the pod author's `volumeAttributes` and
`csi.storage.k8s.io/ephemeral: "true"` (sent because the CSIDriver has podInfoOnMount). The pod
author is not the administrator, so the node only accepts what its flags allow:

    --ephemeral-allow s3://bucket/prefix,https://mirror/models,local:///srv/public
        source prefixes (segment-wise: s3://bucket/pre allows s3://bucket/pre/x, not
        s3://bucket/prefix); nothing is allowed by default, local:// only when a directory is
        listed by name, pvc:// never (it names another namespace's claim)
    --ephemeral-endpoint https://s3.internal:9000
        S3 endpoints an inline volume may name (none by default: AWS only), so that a pod cannot
        point the node at an arbitrary address
    --ephemeral-tiers MEM,SSD
        node tiers inline volumes may fill (default: all)
    --ephemeral-allow-write local:///srv/scratch,s3://bucket/outputs
        source prefixes an inline volume may also write, when kubelet publishes it read-write
        (each must lie under an --ephemeral-allow entry too); none by default: read-only
    --ephemeral-allow-private
        let them reach loopback, link-local (169.254.x.x: the cloud's metadata service),
        private, shared (CGNAT) or unspecified addresses. Without it, the host of an http(s)
        source or S3 endpoint is resolved at NodePublishVolume and refused if any of its
        addresses is one of those, even when listed above: a name's addresses can change.

A refusal is INVALID_ARGUMENT with a message naming the source (the host and address) and the
flag, before anything is mounted; a host that does not resolve is UNAVAILABLE (kubelet retries).
A source's redirects are the node's matter for every volume (--http-redirect-allow).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cache_engine.source import Source, parse_source
from cache_engine.spec import DatasetSpec
from cache_engine.ufs.addresses import Resolve, non_public_address, resolve
from eddy.base.errors import InvalidArgument, InvalidParameter, Unavailable

EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
_ENCODED = ("%2e", "%2f", "%5c")  # an encoded dot or slash could walk out of an allowed prefix


def is_ephemeral(volume_context: dict[str, str]) -> bool:
    return volume_context.get(EPHEMERAL_KEY, "").lower() == "true"


def _split(values: Iterable[str]) -> list[str]:
    """Flag values, each repeatable and comma-separated; empty items are ignored."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


@dataclass(frozen=True)
class EphemeralPolicy:
    """Which sources, S3 endpoints and tiers pod authors may name in an inline volume on this node.

    Built once from the node plugin's --ephemeral-* flags (`from_flags`); NodeService asks it
    at NodePublishVolume of an inline volume, before anything is mounted. Empty: none allowed."""

    sources: tuple[Source, ...] = ()
    endpoints: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()  # empty: every node tier
    private: bool = False  # may reach loopback, link-local and private addresses
    lookup: Resolve = field(default=resolve, compare=False, repr=False)
    writers: tuple[Source, ...] = ()  # sources inline volumes may write

    @classmethod
    def from_flags(cls, allow: Iterable[str] = (), endpoints: Iterable[str] = (),
                   tiers: Iterable[str] = (), private: bool = False,
                   lookup: Resolve = resolve, write: Iterable[str] = ()) -> EphemeralPolicy:
        sources, writers = _sources(allow, "--ephemeral-allow"), \
            _sources(write, "--ephemeral-allow-write")
        for source in writers:
            if not any(_covers(allowed, source) for allowed in sources):
                raise InvalidArgument(f"--ephemeral-allow-write {source.shown}: not under any "
                                      "--ephemeral-allow entry (a source is read before it "
                                      "is written)")
        return cls(tuple(sources), tuple(e.rstrip("/") for e in _split(endpoints)),
                   tuple(_split(tiers)), private, lookup, tuple(writers))

    def may_write(self, source_uri: str) -> bool:
        """Whether an inline volume of `source_uri` may be mounted read-write here."""
        try:
            source = parse_source(source_uri, "source")
        except InvalidParameter:
            return False
        return any(_covers(allowed, source) for allowed in self.writers)

    def admit(self, spec: DatasetSpec) -> DatasetSpec:
        """`spec` as this node will serve it inline, or InvalidArgument saying why not."""
        source = spec.source
        if source.scheme == "pvc":
            raise InvalidArgument(f"inline ephemeral volumes cannot read {source.uri}: pvc:// "
                                  "sources are resolved by the controller; use a StorageClass")
        if not any(_covers(allowed, source) for allowed in self.sources):
            hint = " (local:// directories must be listed one by one)" \
                if source.scheme == "local" else ""
            raise InvalidArgument(f"inline ephemeral volumes may not read {source.shown}: it is "
                                  f"not under any --ephemeral-allow entry of this node{hint}")
        if spec.endpoint and spec.endpoint.rstrip("/") not in self.endpoints:
            raise InvalidArgument(f"inline ephemeral volumes may not use endpoint "
                                  f"{spec.endpoint}: it is not an --ephemeral-endpoint")
        self._check_address(spec)
        return self._with_tiers(spec)

    def _check_address(self, spec: DatasetSpec) -> None:
        """Refuse a source host (http(s), an S3 endpoint) on the node's own networks."""
        scheme = spec.source.scheme
        url = spec.endpoint if scheme == "s3" else spec.source.uri \
            if scheme in ("http", "https") else ""
        host = urlsplit(url).hostname if url and not self.private else None
        if not host:
            return  # AWS S3, local://, nfs:// (an NFS server is the administrator's to list)
        try:
            address = non_public_address(host, self.lookup)
        except OSError as e:
            raise Unavailable(f"inline ephemeral volume: host {host} does not resolve "
                              f"({e.strerror or e})") from None
        if address:
            raise InvalidArgument(
                f"inline ephemeral volumes may not reach {host} (address {address}): loopback, "
                "link-local and private addresses need --ephemeral-allow-private on this node")

    def _with_tiers(self, spec: DatasetSpec) -> DatasetSpec:
        if not self.tiers:
            return spec
        refused = [t for t in spec.tiers if t not in self.tiers]
        if refused:
            raise InvalidArgument(f"inline ephemeral volumes may not use tier {refused[0]!r} "
                                  f"(--ephemeral-tiers: {', '.join(self.tiers)})")
        return spec if spec.tiers else dataclasses.replace(spec, tiers=self.tiers)


def _sources(entries: Iterable[str], flag: str) -> list[Source]:
    sources = []
    for entry in _split(entries):
        try:
            source = parse_source(entry, flag)
        except InvalidParameter as e:
            raise InvalidArgument(f"{e} ({entry!r})") from None
        if source.scheme == "pvc":
            raise InvalidArgument(f"{flag}: pvc:// sources cannot be used inline; they are "
                                  "resolved by the controller")
        sources.append(source)
    return sources


def _covers(allowed: Source, source: Source) -> bool:
    """True when `source` is `allowed` or lies below it, path segment by path segment."""
    if allowed.scheme != source.scheme:
        return False
    if any(code in source.uri.lower() for code in _ENCODED):
        return False
    prefix = allowed.uri.rstrip("/")
    return source.uri == allowed.uri or source.uri.startswith(prefix + "/")
