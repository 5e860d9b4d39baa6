"""Sizes as Kubernetes writes them ("20Gi", "500M", "4096"), read exactly and shown short.

Volume parameters (cacheCapacity, blockSize), tier flags and the benchmarks all take sizes in
this form; `format_bytes` is how eddy shows one back.
"""

from __future__ import annotations

import re
from fractions import Fraction

from eddy.base.limits import shown

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGTPE]i|[kMGTPE])?$")
_SUFFIX = {
    None: 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
}


def parse_quantity(text: str) -> int:
    """Bytes in a Kubernetes-style quantity ("20Gi", "500M", "4096"); ValueError if malformed."""
    m = _QUANTITY.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{shown(text)} is not a size such as 4Mi, 20Gi or 1000000")
    number, suffix = m.groups()
    return int(Fraction(number) * _SUFFIX[suffix])  # exact: no float overflow or rounding


def format_bytes(n: int) -> str:
    """Human-readable binary size: 1.5GiB, 512MiB, 0B."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"
