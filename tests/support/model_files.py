"""Model files as loaders find them: safetensors headers and whole files, for tests and bench.

A safetensors file is 8 bytes of little-endian header length, a JSON header (padded with
spaces to a multiple of 8, as the safetensors library writes it) naming each tensor's dtype,
shape and byte range after the header, then the tensors' bytes.
"""

from __future__ import annotations

import json

from tests.support.engine import blob


def safetensors_header(tensor_bytes: dict[str, int], metadata: dict | None = None) -> bytes:
    """Length and header of a file holding tensors of these sizes (F32), in this order."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, n in tensor_bytes.items():
        header[name] = {"dtype": "F32", "shape": [n // 4],
                        "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def safetensors_file(tensor_bytes: dict[str, int], seed: int = 0,
                     metadata: dict | None = None) -> bytes:
    """A whole safetensors file: the header, then the tensors' bytes."""
    return (safetensors_header(tensor_bytes, metadata)
            + blob(sum(tensor_bytes.values()), seed))


def tensor_ranges(data: bytes) -> dict[str, tuple[int, int]]:
    """Each tensor's [start, end) in the file, read back from its header."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return {name: (8 + n + info["data_offsets"][0], 8 + n + info["data_offsets"][1])
            for name, info in header.items() if name != "__metadata__"}
