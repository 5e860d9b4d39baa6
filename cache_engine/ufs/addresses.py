"""Whether a host is on the public internet, or on the node's own networks.

A source chosen by someone other than the node's administrator (a pod author's inline volume,
a web server's redirect) must not make the node reach loopback, link-local (169.254.x.x: the
cloud's metadata service), private (RFC 1918, fc00::/7), shared (CGNAT 100.64/10),
unspecified or multicast addresses: those are the node's, not the source's. Every address a
name resolves to is checked, an IPv4-mapped IPv6 address as its IPv4 one.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

Resolve = Callable[[str], list[str]]


def resolve(host: str) -> list[str]:
    """Every address `host` resolves to (an address literal: itself); OSError if none."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.partition("%")[0])  # fe80::1%eth0: its zone apart
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def non_public_address(host: str, lookup: Resolve = resolve) -> str:
    """The first address of `host` that is not public ("" when all are); OSError when the
    name does not resolve."""
    return next((a for a in lookup(host.strip("[]")) if not is_public(a)), "")
