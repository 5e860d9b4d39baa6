"""Model files as loaders find them: safetensors headers and whole files, for tests and bench.

A safetensors file is 8 bytes of little-endian header length, a JSON header (padded with
spaces to a multiple of 8, as the safetensors library writes it) naming each tensor's dtype,
shape and byte range after the header, then the tensors' bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys

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


# A model loader in a pod: map the file, read its header from the map, copy every tensor out in
# shuffled order (as vLLM or transformers do), and print the sha256 of the file put back
# together from what it copied.
_LOADER = """
import hashlib, json, mmap, os, random, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
with mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as mapped:
    n = int.from_bytes(mapped[:8], "little")
    header = json.loads(mapped[8:8 + n])
    ranges = [(8 + n + t["data_offsets"][0], 8 + n + t["data_offsets"][1])
              for name, t in header.items() if name != "__metadata__"]
    random.Random(5).shuffle(ranges)
    parts = {0: mapped[:8 + n]}
    for begin, end in ranges:
        parts[begin] = mapped[begin:end]
print(hashlib.sha256(b"".join(parts[k] for k in sorted(parts))).hexdigest())
"""


def loader_in_pod(path: str) -> subprocess.Popen:
    """Start the loader on `path` in a private mount namespace of its own, as a container
    would; it prints the sha256 of what it read."""
    return subprocess.Popen(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                             _LOADER, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def load_in_pod(path: str, timeout: float = 120.0) -> str:
    """`loader_in_pod`, waited for: the sha256 of what it read."""
    loader = loader_in_pod(path)
    out, err = loader.communicate(timeout=timeout)
    assert loader.returncode == 0, err
    return out.strip()
