"""The node's cache tiers, from `--tier NAME:PATH:SIZE[:HIGH:LOW]` flags.

Tiers are node configuration, ordered fastest first (MEM, SSD, HDD); a volume only chooses
among them by name. Each tier owns `<path>/blocks/` and `<path>/tmp/` and nothing else under
its path, so two tiers must never share or nest their paths.

    >>> parse_tier("MEM:/dev/shm/eddy:4Gi")
    Tier(name='MEM', path='/dev/shm/eddy', size=4294967296, high=0.95, low=0.85)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from eddy.base.errors import InvalidArgument

from .quantity import parse_quantity

_TIER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
DEFAULT_HIGH = 0.95
DEFAULT_LOW = 0.85


@dataclass(frozen=True)
class Tier:
    """One tier: `size` bytes under `path`; above `high * size` maintenance demotes LRU blocks
    until usage is at or below `low * size`."""

    name: str
    path: str
    size: int
    high: float = DEFAULT_HIGH
    low: float = DEFAULT_LOW

    @property
    def blocks_dir(self) -> str:
        return os.path.join(self.path, "blocks")

    @property
    def tmp_dir(self) -> str:
        return os.path.join(self.path, "tmp")


def parse_tier(text: str) -> Tier:
    """A Tier from `NAME:PATH:SIZE[:HIGH:LOW]`; InvalidArgument names the flag value."""

    def bad(problem: str) -> InvalidArgument:
        return InvalidArgument(f"--tier {text!r}: {problem}")

    parts = text.split(":")
    if len(parts) not in (3, 5):
        raise bad("expected NAME:PATH:SIZE or NAME:PATH:SIZE:HIGH:LOW")
    name, path, size_text = parts[:3]
    if not _TIER_NAME.match(name):
        raise bad(f"{name!r} is not a tier name (a letter, then letters, digits, _ or -)")
    if not path.startswith("/"):
        raise bad(f"path {path!r} must be absolute")
    path = os.path.normpath(path)
    if path == "/":
        raise bad("a tier cannot be the root directory")
    try:
        size = parse_quantity(size_text)
    except ValueError as e:
        raise bad(str(e)) from None
    if size <= 0:
        raise bad("size must be positive")
    high, low = DEFAULT_HIGH, DEFAULT_LOW
    if len(parts) == 5:
        try:
            high, low = float(parts[3]), float(parts[4])
        except ValueError:
            raise bad(f"watermarks {parts[3]!r}:{parts[4]!r} are not fractions") from None
        if not 0 < low <= high <= 1:
            raise bad(f"watermarks need 0 < LOW <= HIGH <= 1, got HIGH={high} LOW={low}")
    return Tier(name, path, size, high, low)


def parse_tiers(texts: list[str]) -> list[Tier]:
    """Tiers in flag order (fastest first); refuses duplicate names and overlapping paths."""
    tiers = [parse_tier(t) for t in texts]
    check_tiers(tiers)
    return tiers


def check_tiers(tiers: list[Tier]) -> None:
    """InvalidArgument when two tiers share a name or one's path is inside another's."""
    for i, a in enumerate(tiers):
        for b in tiers[i + 1:]:
            if a.name == b.name:
                raise InvalidArgument(f"--tier: tier name {a.name!r} is given twice")
            if _nested(a.path, b.path):
                raise InvalidArgument(
                    f"--tier: paths of {a.name} ({a.path}) and {b.name} ({b.path}) overlap")


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def check_tier_names(names: tuple[str, ...], tiers: list[Tier]) -> None:
    """InvalidArgument unless every tier a volume names is one of the node's `tiers`."""
    known = [t.name for t in tiers]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidArgument(
            f"parameter 'tiers': tier {unknown[0]!r} is not configured on this node "
            f"(node tiers: {', '.join(known) or 'none'})")
