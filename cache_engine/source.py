"""Which data a `source` parameter names: its scheme, and where in that scheme's namespace.

A source URI comes from a StorageClass or, for inline volumes, from a pod's author; it is
checked here before anything is opened: known schemes only, no credentials in it, no `..`, and
names each scheme accepts (S3 buckets, Kubernetes names, NFS servers).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from eddy.base.errors import InvalidParameter
from eddy.base.limits import path_problem, shown, text_problem
from eddy.base.uris import shown_uri

SOURCE_SCHEMES = ("local", "s3", "pvc", "nfs", "http", "https")
MAX_VALUE_BYTES = 4096  # PATH_MAX: a source URI or a preload list is at most a path long
# S3 bucket names: 3-63 chars of lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^[0-9]+(\.[0-9]+){3}$")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class Source:
    """A parsed `source` parameter. `root` is the path inside the scheme's namespace."""

    scheme: str
    uri: str
    bucket: str = ""  # s3 bucket, pvc namespace, or nfs server
    root: str = ""  # local: absolute dir; s3: key prefix; pvc: name[/subdir]; nfs: absolute
    #                 export path (the node mounts it); http(s): full URL

    @property
    def shown(self) -> str:
        """The URI for people (logs, errors, status): no query string (it may be a signature)."""
        return shown_uri(self.uri)


def parse_source(value: str, key: str = "source") -> Source:
    """Validate a source URI; the error names `key` and what is wrong."""
    if not value:
        raise InvalidParameter(key, "is required (e.g. s3://bucket/prefix or local:///data)")
    problem = text_problem(value, MAX_VALUE_BYTES)
    if problem:
        raise InvalidParameter(key, problem)
    parts = split_url(key, value)
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
        # normpath keeps a leading "//"
        root = checked_path(key, "/" + posixpath.normpath(raw_path).lstrip("/"))
        return Source("local", f"local://{root}", root=root)
    if scheme == "s3":
        bucket = parts.netloc
        if not bucket:
            raise InvalidParameter(key, "is missing the bucket (s3://bucket/prefix)")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket or _IPV4.fullmatch(bucket):
            raise InvalidParameter(key, f"{shown(bucket)} is not a valid S3 bucket name")
        inside = raw_path.strip("/")
        prefix = checked_path(key, posixpath.normpath(raw_path).strip("/") if inside else "")
        uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        return Source("s3", uri, bucket=bucket, root=prefix)
    if scheme == "pvc":
        namespace = parts.netloc
        segs = [s for s in raw_path.split("/") if s]
        if not namespace or not segs:
            raise InvalidParameter(key, "pvc sources are pvc://namespace/name[/subdir]")
        for name in (namespace, segs[0]):
            if not _K8S_NAME.fullmatch(name):
                raise InvalidParameter(key, f"{shown(name)} is not a valid Kubernetes name")
        root = checked_path(key, "/".join(segs))
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
    if netloc.startswith("-"):  # it would reach mount(8) as an option
        raise InvalidParameter(key, f"{shown(netloc)} is not a server name")
    if not raw_path.startswith("/"):
        raise InvalidParameter(key, "nfs sources need the export path (nfs://server/export)")
    root = checked_path(key, "/" + posixpath.normpath(raw_path).lstrip("/"))
    return Source("nfs", f"nfs://{netloc}{root}", bucket=netloc, root=root)


def split_url(key: str, value: str) -> SplitResult:
    """urlsplit, whose ValueError (a bracketed host that is no IPv6 address) names `key`."""
    try:
        return urlsplit(value)
    except ValueError as e:
        raise InvalidParameter(key, f"is not a valid URL ({e})") from None


def checked_path(key: str, path: str) -> str:
    """`path` (inside a source), if every component fits a file name."""
    problem = path_problem(path, absolute=False)
    if problem:
        raise InvalidParameter(key, f"path {problem}")
    return path


def parse_endpoint(value: str) -> str:
    """An S3 `endpoint`: an http(s) URL with no credentials, query or fragment."""
    parts = split_url("endpoint", value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameter("endpoint", f"{shown(value)} is not an http(s):// URL")
    if parts.username or parts.password:
        raise InvalidParameter("endpoint", "must not contain credentials")
    if parts.query or parts.fragment:  # nothing to say to S3 there, and it would be shown
        raise InvalidParameter("endpoint", "must not have a query or fragment")
    return value.rstrip("/")
