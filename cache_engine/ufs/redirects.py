"""Which redirects an http(s) source follows: within its own origin, unless the node allows more.

A redirect is the web server's choice, not the choice of whoever named the URL: followed
blindly, an allowed URL could send the node anywhere, to its own private networks too (SSRF).
So `HttpUfs` follows redirects itself (urllib3 is told not to), at most `MAX_REDIRECTS` hops,
and each hop must keep the origin (scheme, host, port) of the URL it leaves, unless the node's
`--http-redirect-allow ORIGIN` (repeatable) says more:

    --http-redirect-allow https://cdn.example.com     that origin (port 443), whatever its
                                                      addresses: the administrator named it
    --http-redirect-allow '*'                         any http(s) origin whose every address is
                                                      public (addresses.py); a private, loopback
                                                      or link-local one must be named

A refused redirect is a PermissionError naming both origins (a source that cannot be opened,
or EACCES on a read). The policy is node configuration: `eddy serve` hands it to its engine
(`EngineHost`) and to each mount daemon's stdin config (`flags()`), which reads the source
directly while the engine is away; `eddy mount` likewise.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from eddy.base.errors import InvalidArgument
from eddy.base.uris import shown_uri

from .addresses import Resolve, non_public_address, resolve
from .base import UfsUnavailable
from .http_index import url_origin

MAX_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
ANY_PUBLIC = "*"
FLAG = "--http-redirect-allow"


def origin_text(url: str) -> str:
    """scheme://host:port of `url`, the port always written (a URL with a bad port: as shown)."""
    origin = url_origin(url)
    if len(origin) != 3:
        return shown_uri(url)
    scheme, host, port = origin
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _is_origin(text: str) -> bool:
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return (parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
            and not (parts.path.strip("/") or parts.query or parts.fragment or parts.username
                     or parts.password) and len(url_origin(text)) == 3)


@dataclass(frozen=True)
class RedirectPolicy:
    """The origins an http(s) source may be redirected to besides its own (see the module)."""

    origins: frozenset[str] = frozenset()  # as `origin_text` writes them
    any_public: bool = False
    lookup: Resolve = field(default=resolve, compare=False, repr=False)

    @classmethod
    def from_flags(cls, values: Iterable[str], lookup: Resolve = resolve) -> RedirectPolicy:
        """From --http-redirect-allow values (each repeatable and comma-separated)."""
        origins, any_public = set(), False
        for item in (i.strip() for v in values for i in v.split(",") if i.strip()):
            if item == ANY_PUBLIC:
                any_public = True
                continue
            if not _is_origin(item):
                raise InvalidArgument(f"{FLAG} {item!r}: not an origin such as "
                                      "https://host[:port], nor '*'")
            origins.add(origin_text(item))
        return cls(frozenset(origins), any_public, lookup)

    def flags(self) -> list[str]:
        """The values `from_flags` makes this policy from again (for a daemon's config)."""
        return sorted(self.origins) + ([ANY_PUBLIC] if self.any_public else [])

    def check(self, source: str, target: str) -> None:
        """Raise PermissionError unless a redirect from `source` to `target` may be followed."""
        came, goes = origin_text(source), origin_text(target)
        if urlsplit(target).scheme.lower() not in ("http", "https"):
            why = "only http(s) redirects are followed"
        elif goes == came or goes in self.origins:
            return
        elif self.any_public:
            try:
                private = non_public_address(url_origin(target)[1], self.lookup)
            except OSError:
                return  # it cannot be reached at all: the request says so
            if not private:
                return
            why = f"its address {private} is not public ({FLAG} must name it)"
        else:
            why = f"a source is redirected within its own origin only, unless {FLAG} allows more"
        raise PermissionError(errno.EACCES, f"redirect from {came} to {goes} "
                              f"refused: {why}")

    def follow(self, send: Callable, method: str, url: str,
               release: Callable) -> tuple[object, str]:
        """`send(method, url)`, the answer of each allowed redirect `release`d and followed:
        the last response (its body not read yet) and the URL that gave it."""
        first = url
        for _ in range(MAX_REDIRECTS + 1):
            resp = send(method, url)
            location = resp.headers.get("Location") if resp.status in REDIRECT_STATUSES else None
            if not location:
                return resp, url
            release(resp)
            try:
                target = urljoin(url, location.strip())
            except ValueError:
                raise UfsUnavailable(f"{shown_uri(url)} redirected to a URL that is not valid: "
                                     f"{shown_uri(location)}") from None
            self.check(url, target)
            if resp.status == 303 and method != "HEAD":
                method = "GET"
            url = target
        raise UfsUnavailable(f"{shown_uri(first)}: more than {MAX_REDIRECTS} redirects")


SAME_ORIGIN = RedirectPolicy()  # what a source follows when the node says nothing
