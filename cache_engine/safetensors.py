"""What a safetensors file says of itself: which of its byte ranges hold tensors.

The format (huggingface/safetensors): 8 bytes, a little-endian header length N; N bytes of
JSON, an object mapping each tensor's name to `{"dtype", "shape", "data_offsets": [begin,
end]}` (offsets from the end of the header), plus an optional `"__metadata__"`; then the
tensors' bytes. Whole-file prefetch (`file_prefetch`) reads the header to tell a model file
from something else named like one, and loads the ranges it names in offset order. Nothing
in the file is trusted: a header longer than the format's own limit, that is not a JSON
object, or that names a range outside the file makes it "not safetensors" (None).

    n = header_length(first_9_bytes, file_size)          # None: not safetensors
    spans = tensor_spans(bytes_8_to_8_plus_n, file_size)  # [(0, 8 + n), (start, end), ...]
"""

from __future__ import annotations

import json
from collections.abc import Iterator

LENGTH_BYTES = 8  # the header length's own bytes
MAX_HEADER_BYTES = 100_000_000  # what the safetensors library refuses beyond


def header_length(first: bytes, file_size: int) -> int | None:
    """The header's length N from the file's first 9 (or more) bytes; None unless they can
    start a safetensors file of `file_size` bytes (N within the file and the format's
    limit, and the header a JSON object: its first byte `{`)."""
    if len(first) <= LENGTH_BYTES:
        return None
    n = int.from_bytes(first[:LENGTH_BYTES], "little")
    if not 2 <= n <= MAX_HEADER_BYTES or LENGTH_BYTES + n > file_size:
        return None
    return n if first[LENGTH_BYTES:LENGTH_BYTES + 1] == b"{" else None


def tensor_spans(header: bytes, file_size: int) -> list[tuple[int, int]] | None:
    """The byte ranges [start, end) of the file that the header and its tensors take, merged
    and in offset order (the header's first); None unless `header` (the N bytes after the
    length) is a safetensors header of a file of `file_size` bytes."""
    try:
        doc = json.loads(header)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(doc, dict):
        return None
    data_start = LENGTH_BYTES + len(header)
    ranges = [(0, data_start)]
    for name, info in doc.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets)):
            return None
        begin, end = offsets
        if not 0 <= begin <= end or data_start + end > file_size:
            return None
        if end > begin:
            ranges.append((data_start + begin, data_start + end))
    return _merged(ranges)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def span_blocks(spans: list[tuple[int, int]], block_size: int) -> Iterator[int]:
    """The indexes of the blocks that hold `spans` (sorted, disjoint), each once, in order."""
    last = -1
    for start, end in spans:
        for index in range(max(start // block_size, last + 1), (end - 1) // block_size + 1):
            yield index
            last = index


def covers_all(spans: list[tuple[int, int]], block_size: int, count: int) -> bool:
    """Whether `spans` (sorted, disjoint) touch every one of blocks 0..count-1."""
    reached = 0  # the first block index no span touched yet
    for start, end in spans:
        if start // block_size > reached:
            return False
        reached = max(reached, (end - 1) // block_size + 1)
    return reached >= count
