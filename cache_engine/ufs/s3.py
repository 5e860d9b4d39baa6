"""An S3 bucket prefix as a dataset source (`s3://bucket/prefix`), through obstore.

S3 has keys, not directories: a directory is any key prefix ending in "/" that has keys below
it, and a zero-byte "dir/" marker object makes an empty one. A zero-byte object that also has
keys below it is shown as the directory; a non-empty object shadows keys below its name.
The file version is the ETag, and a read of a version sends `If-Match`, so bytes of a newer
object are never returned as the old one (the GET's own ETag is checked as well, for servers
that ignore the header).

A writer-mode volume also writes through this class (`put`, `copy`, `delete`, the "dir/"
markers of mkdir and rmdir); `s3_writes.py` stages what a pod writes and decides when to call
them. Markers go through `s3_sign.py`: obstore cannot name a key that ends in "/".

obstore's S3 builder also reads AWS_* environment variables. Credentials, endpoint, region,
addressing style and signing are therefore always set explicitly, so the node's environment can
neither lend its credentials to a volume nor send requests elsewhere. obstore's synchronous
calls release the GIL, so reads from many threads run in parallel on one shared client.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from typing import NoReturn

import obstore
from obstore.exceptions import (
    BaseError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from ..spec import DatasetSpec
from . import s3_sign
from .base import (
    Entry,
    Kind,
    UfsBackend,
    UfsUnavailable,
    VersionChanged,
    clean_path,
    join,
    read_path,
)

DEFAULT_REGION = "us-east-1"
DEFAULT_PART_SIZE = 16 << 20
# Fail over in seconds, not minutes: the engine has its own fallbacks and a pod waits on us.
DEFAULT_CLIENT_OPTIONS = {"connect_timeout": "5s", "timeout": "120s", "pool_idle_timeout": "60s"}
DEFAULT_RETRY = {
    "max_retries": 3,
    "retry_timeout": timedelta(seconds=30),
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2)},
}

_STATUS = re.compile(r"status code: (\d{3})")
_S3_CODE = re.compile(r"<Code>([A-Za-z.]+)</Code>")
# size-mtime_ns, used when a server sends no ETag; multipart ETags end in -N with N <= 10000.
_FALLBACK_VERSION = re.compile(r"^\d+-\d{10,}$")


class _PastEnd(Exception):
    """The range starts at or after the end of the object (HTTP 416)."""


def _etag(meta: dict) -> str:
    tag = meta.get("e_tag") or ""
    if tag.startswith("W/"):
        tag = tag[2:]
    return tag.strip('"')


def _version(meta: dict) -> str:
    """The ETag, or size + mtime for a server that sends none."""
    return _etag(meta) or f"{meta['size']}-{_mtime_ns(meta)}"


def _mtime_ns(meta: dict) -> int:
    modified = meta.get("last_modified")
    return int(modified.timestamp() * 1_000_000_000) if modified else 0


class S3Ufs(UfsBackend):
    """A read-only view of `s3://bucket/prefix`; dataset paths are relative to the prefix."""

    def __init__(
        self,
        spec: DatasetSpec,
        secrets: dict[str, str],
        *,
        client_options: dict | None = None,
        retry_config: dict | None = None,
    ):
        self.bucket = spec.source.bucket
        self.prefix = spec.source.root.strip("/")
        region = spec.region or DEFAULT_REGION
        if spec.endpoint:
            endpoint, virtual_hosted = spec.endpoint.rstrip("/"), False  # MinIO, SeaweedFS, ...
        elif "." in self.bucket:
            # TLS wildcard certificates do not cover dotted bucket hosts: use path style.
            endpoint, virtual_hosted = f"https://s3.{region}.amazonaws.com", False
        else:
            endpoint, virtual_hosted = f"https://{self.bucket}.s3.{region}.amazonaws.com", True
        self.endpoint = endpoint
        self.region = region
        self._virtual_hosted = virtual_hosted
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.description = f"{where} at {endpoint}" if spec.endpoint else where
        self._anonymous = not secrets.get("accessKeyId")
        self._credentials: s3_sign.Credentials | None = None
        if self._anonymous:
            auth: dict = {"skip_signature": True}
        else:
            self._credentials = s3_sign.Credentials(
                secrets["accessKeyId"], secrets.get("secretAccessKey", ""),
                secrets.get("sessionToken", ""))
            auth = {
                "skip_signature": False,
                "access_key_id": secrets["accessKeyId"],
                "secret_access_key": secrets.get("secretAccessKey", ""),
                # "" rather than absent, so AWS_SESSION_TOKEN from the environment is not used.
                "session_token": secrets.get("sessionToken", ""),
            }
        options = {**DEFAULT_CLIENT_OPTIONS, **(client_options or {})}
        options["allow_http"] = endpoint.startswith("http://")
        self._store = S3Store(
            self.bucket,
            endpoint=endpoint,
            region=region,
            virtual_hosted_style_request=virtual_hosted,
            s3_express=False,
            client_options=options,
            retry_config={**DEFAULT_RETRY, **(retry_config or {})},
            **auth,
        )

    # -- the UfsBackend interface ------------------------------------------------------------

    def stat(self, path: str) -> Entry:
        rel = clean_path(path)
        key = self._key(rel)
        if not rel:
            # The root always exists, but asking proves the bucket and credentials work.
            with self._boundary(rel):
                self._has_children(key)
            return Entry("", Kind.DIR)
        with self._boundary(rel):
            try:
                meta = obstore.head(self._store, key)
            except FileNotFoundError:
                meta = None
            if meta is not None and meta["size"] > 0:
                return self._file(rel, meta)
            if self._has_children(key):
                return Entry(rel, Kind.DIR, 0, _mtime_ns(meta) if meta else 0)
        if meta is not None:
            return self._file(rel, meta)
        raise FileNotFoundError(errno.ENOENT, f"no such file or directory in {self._where()}", rel)

    def list(self, path: str) -> list[Entry]:
        rel = clean_path(path)
        key = self._key(rel)
        with self._boundary(rel):
            listing = obstore.list_with_delimiter(self._store, key or None)
        skip = len(key) + 1 if key else 0
        dirs = {p[skip:] for p in listing["common_prefixes"]}
        files: dict[str, Entry] = {}
        for meta in listing["objects"]:
            name = meta["path"][skip:]
            if not name or "/" in name or meta["path"] == key:
                continue  # the "dir/" marker of this directory itself
            if name in dirs:
                if meta["size"] == 0:
                    continue  # a marker: the directory wins
                dirs.discard(name)  # a real object shadows the keys below its name
            files[name] = self._file(join(rel, name), meta)
        entries = [Entry(join(rel, d), Kind.DIR) for d in dirs if d] + list(files.values())
        # An empty listing is an empty directory (marker only), a file, or nothing at all.
        if not entries and rel and self.stat(rel).kind is not Kind.DIR:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", rel)
        return sorted(entries, key=lambda e: e.name)

    def read(self, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        rel = read_path(path, offset, length)
        key = self._key(rel)
        chunks: list[bytes] = []
        while length > 0:
            options: dict = {"range": (offset, offset + length)}
            if version and not chunks and not _FALLBACK_VERSION.match(version):
                options["if_match"] = f'"{version}"'
            try:
                with self._boundary(rel):
                    result = obstore.get(self._store, key, options=options)
                    data = result.bytes()  # bytes-like, not copied again
                meta = result.meta
            except _PastEnd:
                if version and not chunks:
                    # Past the end of the version asked for, or of a changed, shorter object?
                    self._check_version(rel, version)
                break
            if version and _version(meta) != version:
                raise VersionChanged(errno.ESTALE, "file changed at the source", rel)
            chunks.append(data)
            offset += len(data)
            length -= len(data)
            if not data or offset >= meta["size"]:
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        """Nothing to release: obstore closes idle pooled connections itself."""

    # -- writes: only a writer-mode volume calls these (s3_writes.py) -------------------------

    def put(self, path: str, source: bytes | os.PathLike | Iterator[bytes], *,
            part_size: int = DEFAULT_PART_SIZE, max_concurrency: int = 4) -> str:
        """Store `source` (bytes, a local file, or an iterator of parts) at `path`; its ETag.

        Larger than `part_size` (an iterator: always) it is a multipart upload; an exception
        raised by the iterator aborts that upload on the server and comes out here unchanged.
        """
        rel = read_path(path, 0, 0)
        with self._boundary(rel):
            result = obstore.put(self._store, self._key(rel), source, chunk_size=part_size,
                                 max_concurrency=max_concurrency)
        return _etag(result)

    def copy(self, src: str, dst: str) -> None:
        """A server-side copy of the object at `src` over `dst` (S3 copies up to 5 GiB)."""
        rel, to = read_path(src, 0, 0), read_path(dst, 0, 0)
        with self._boundary(rel):
            obstore.copy(self._store, self._key(rel), self._key(to))

    def delete(self, path: str) -> None:
        """Delete the object at `path`; S3 answers the same whether or not it existed."""
        rel = read_path(path, 0, 0)
        with self._boundary(rel):
            obstore.delete(self._store, self._key(rel))

    def key(self, path: str) -> str:
        """The S3 key of a dataset path (the volume's prefix included)."""
        return self._key(clean_path(path))

    def has_keys_below(self, path: str) -> bool:
        """True when a key other than the directory's own "dir/" marker lies below `path`."""
        rel = clean_path(path)
        key = self._key(rel)
        with self._boundary(rel):
            stream = obstore.list(self._store, key or None, chunk_size=2)
            first = next(iter(stream), [])
        return any(meta["path"] != key for meta in first)

    def put_marker(self, path: str) -> None:
        """Create the zero-byte "dir/" object that makes `path` an (empty) directory."""
        self._marker_request("PUT", path)

    def delete_marker(self, path: str) -> None:
        """Delete the "dir/" object of `path` (keys below it are untouched)."""
        self._marker_request("DELETE", path)

    # -- helpers -----------------------------------------------------------------------------

    def _marker_request(self, method: str, path: str) -> None:
        rel = read_path(path, 0, 0)
        quoted = urllib.parse.quote(f"{self._key(rel)}/", safe="/-_.~")
        base = self.endpoint if self._virtual_hosted else f"{self.endpoint}/{self.bucket}"
        try:
            answer = s3_sign.signed_request(method, f"{base}/{quoted}", self.region,
                                            self._credentials)
        except OSError as e:
            reason = getattr(e, "reason", e)
            raise UfsUnavailable(
                f"S3 endpoint {self.endpoint} failed for {self._where()}: cannot connect "
                f"({type(reason).__name__})"
            ) from None
        if answer.status >= 300:
            self._status_error(rel, answer.status, answer.body)

    def _key(self, rel: str) -> str:
        if not self.prefix:
            return rel
        return f"{self.prefix}/{rel}" if rel else self.prefix

    def _where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _file(self, rel: str, meta: dict) -> Entry:
        return Entry(rel, Kind.FILE, meta["size"], _mtime_ns(meta), _version(meta))

    def _has_children(self, key: str) -> bool:
        """True when any key exists below `key/` (one list page at most)."""
        stream = obstore.list(self._store, key, chunk_size=1)
        return bool(next(iter(stream), None))

    def _check_version(self, rel: str, version: str) -> None:
        with self._boundary(rel):
            meta = obstore.head(self._store, self._key(rel))
        if _version(meta) != version:
            raise VersionChanged(errno.ESTALE, "file changed at the source", rel)

    @contextlib.contextmanager
    def _boundary(self, rel: str) -> Iterator[None]:
        """Translate obstore errors into the UfsBackend error contract (no secrets inside)."""
        try:
            yield
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT, f"no such file or directory in {self._where()}", rel
            ) from None
        except PreconditionError:
            raise VersionChanged(errno.ESTALE, "file changed at the source", rel) from None
        except (PermissionDeniedError, UnauthenticatedError) as e:
            raise self._denied(rel, str(e)) from None
        except BaseError as e:
            text = str(e)
            status = _STATUS.search(text)
            self._status_error(rel, int(status.group(1)) if status else 0, text)

    def _status_error(self, rel: str, status: int, text: str) -> NoReturn:
        """Raise what an S3 error (its HTTP status, its message or error document) means."""
        code = _S3_CODE.search(text)
        if status == 416:
            raise _PastEnd() from None
        if status == 412:
            raise VersionChanged(errno.ESTALE, "file changed at the source", rel) from None
        if status in (401, 403):
            raise self._denied(rel, text) from None
        if code and code.group(1) == "NoSuchBucket":
            raise UfsUnavailable(
                f"bucket {self.bucket!r} does not exist at {self.endpoint}"
            ) from None
        if status == 404:
            raise FileNotFoundError(
                errno.ENOENT, f"no such file or directory in {self._where()}", rel
            ) from None
        raise UfsUnavailable(
            f"S3 endpoint {self.endpoint} failed for {self._where()}: {_reason(text, status)}"
        ) from None

    def _denied(self, rel: str, text: str) -> PermissionError:
        code = _S3_CODE.search(text)
        detail = f" ({code.group(1)})" if code else ""
        who = (
            "anonymous access (the volume has no S3 secret)"
            if self._anonymous
            else "the accessKeyId/secretAccessKey of the volume's secret"
        )
        return PermissionError(
            errno.EACCES,
            f"access to bucket {self.bucket!r} at {self.endpoint} was denied{detail}: "
            f"check {who} and the bucket policy",
            rel,
        )


def _reason(text: str, status: int) -> str:
    """A short cause from an obstore error message (its debug dump names the error kind)."""
    if status:
        code = _S3_CODE.search(text)
        return f"HTTP {status}" + (f" {code.group(1)}" if code else "")
    if re.search(r"kind: Connect|[Cc]onnection refused", text):
        return "cannot connect (connection refused or host unreachable)"
    if re.search(r"TimedOut|timed out|kind: Timeout", text):
        return "request timed out"
    if re.search(r"dns error|failed to lookup", text, re.IGNORECASE):
        return "host name does not resolve"
    first = text.split("\n", 1)[0] if text else "unknown error"
    return first[:300]
