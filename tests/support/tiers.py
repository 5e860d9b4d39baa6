"""What a test sees of a tier on disk: its block files and extents."""

from __future__ import annotations

import os

from .wait import wait_for


def tier_files(tier_path) -> list[str]:
    """Block files under a tier's blocks/ directory (tmp/ is not counted)."""
    out = []
    for top, _dirs, names in os.walk(os.path.join(tier_path, "blocks")):
        out.extend(os.path.join(top, n) for n in names)
    return out


def tier_bytes(tier_path) -> int:
    """Bytes of block files that were all on disk at one instant (never more than were).

    A walk is not atomic, so the files it saw are stat'ed again afterwards: a block file is
    written whole and renamed in, and its name is never reused, so every file found by the walk
    and still there afterwards existed throughout, in particular when the walk ended. An extent
    filled in place is sparse until whole: it counts what it holds, not its apparent size.
    """
    total = 0
    for path in tier_files(tier_path):
        try:
            total += held_bytes(path)
        except FileNotFoundError:
            continue  # removed since the walk saw it
    return total


def held_bytes(path: str) -> int:
    """The bytes a tier file holds: its data ranges (SEEK_DATA/SEEK_HOLE), up to its size. An
    extent filled in place is sparse until whole; a block at its end may hold a single byte
    in a page of its own."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, held, at = os.fstat(fd).st_size, 0, 0
        while at < size:
            try:
                start = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after `at`
                break
            at = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            held += at - start
        return held
    finally:
        os.close(fd)


def wait_compacted(tier_path, files: dict[str, bytes]) -> None:
    """Wait until a tier holds every file in one tier file: each file of 2+ blocks in its
    extent (grown in place, or compacted in the background after its last block came in),
    the others as they are."""
    want = sorted(map(len, files.values()))
    wait_for(lambda: sorted(map(os.path.getsize, tier_files(tier_path))) == want,
             what="every file in one tier file")


def flip_a_byte(path: str, offset: int) -> bytes:
    """Change one byte of a file in place, as a rotting medium would; the byte it was."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    return byte
