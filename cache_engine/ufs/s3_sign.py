"""Signed S3 requests on keys that end in "/", which obstore cannot name.

obstore (object_store's `Path`) drops a trailing "/" from every key, in requests and in signed
URLs alike, so `put("dir/")` writes a zero-byte object "dir": an empty file, not the "dir/"
marker that S3 consoles, s3fs and mountpoint-s3 use for an empty directory. mkdir and rmdir of a
writer-mode volume need exactly that key, so this module signs those few requests itself (AWS
Signature Version 4, header form, empty body) and sends them with urllib, without proxies from
the environment, as the S3 store is built without them.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Credentials:
    """An access key pair; `repr` never shows the secret or the token."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)


@dataclass(frozen=True)
class Answer:
    """What the server said: its status and the start of its body (an S3 error document)."""

    status: int
    body: str


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signed_request(method: str, url: str, region: str, credentials: Credentials | None,
                   timeout: float = 30.0, now: datetime.datetime | None = None) -> Answer:
    """Send `method` with an empty body to `url`, signed unless `credentials` is None.

    Any HTTP status comes back as an Answer; a connection that fails raises OSError (urllib's
    URLError), whose text names no credential.
    """
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.quote(urllib.parse.unquote(parts.path), safe="/-_.~")
    headers = {"host": parts.netloc, "x-amz-content-sha256": _EMPTY_SHA256}
    if credentials is not None:
        stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
        headers["x-amz-date"] = stamp
        if credentials.session_token:
            headers["x-amz-security-token"] = credentials.session_token
        names = sorted(headers)
        canonical = "\n".join([
            method, path, "", *(f"{n}:{headers[n]}" for n in names), "", ";".join(names),
            _EMPTY_SHA256,
        ])
        scope = f"{stamp[:8]}/{region}/s3/aws4_request"
        to_sign = "\n".join([
            "AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest(),
        ])
        key = _hmac(_hmac(_hmac(_hmac(
            f"AWS4{credentials.secret_access_key}".encode(), stamp[:8]), region), "s3"),
            "aws4_request")
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key_id}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
    del headers["host"]  # urllib sends it from the URL, as signed
    request = urllib.request.Request(
        urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", "")),
        data=b"" if method == "PUT" else None, method=method, headers=headers,
    )
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return Answer(response.status, response.read(4096).decode(errors="replace"))
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.read(4096).decode(errors="replace"))
