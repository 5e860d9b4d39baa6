"""Cached blocks: their keys, and the files that hold them in a tier.

A block file is only ever created whole: written under `<tier>/tmp/`, then renamed into
`<tier>/blocks/<dataset_id>/<xx>/<name>`. A crash leaves at worst a tmp file or a renamed file
without an index row, both removed on the next start (`recovery.reconcile`). Every write gets a
fresh file name (a hash of the block key plus a random suffix), so a file that one thread is
about to unlink can never be a newer copy of the same block that another thread just wrote.

An extent is the other kind of tier file: every block of one file version, each at its offset
in the file (`Block.offset`), so the kernel can read the whole file from it (FUSE
passthrough). It is filled block by block under a fresh name, as blocks are stored
(growing.py) or by a compaction (`extents.Extents.build`); a byte of it is written once,
before any row points at it, and never again.
"""

from __future__ import annotations

import contextlib
import enum
import os
import stat
import uuid
from dataclasses import dataclass
from typing import NamedTuple

import xxhash

from eddy.base.errors import FailedPrecondition

from .tiers import Tier

FILE_MODE = 0o600  # tier files hold dataset bytes: readable by the node plugin only
DIR_MODE = 0o700
EXTENT_SUFFIX = ".extent"


class BlockKey(NamedTuple):
    """What a cached block is: one version of one file, one block of it."""

    dataset_id: str
    path: str
    version: str
    index: int


@dataclass(slots=True, eq=False)
class Block:
    """One cached block: where it lives and what its bytes must be.

    `seq` orders LRU: an engine-wide access counter, not a time, so the order survives a
    restart exactly. `atime` (engine clock, not persisted) is when it was last handed out:
    a block handed out moments ago is not a victim, so its reader can still open the file.
    `busy` marks a block that one thread is moving or dropping; no other thread may pick it
    as a victim meanwhile.
    """

    key: BlockKey
    tier: str
    file: str  # relative to the tier's blocks/ directory
    length: int
    checksum: int  # xxh3_64 of the bytes, unsigned
    seq: int = 0
    atime: float = float("-inf")
    busy: bool = False
    offset: int = 0  # where the bytes start in `file`: 0 for a block file, else an extent


class CopyResult(enum.Enum):
    """How a copy of a block between tiers ended; `Placement` decides what follows from it."""

    COPIED = "copied"
    CORRUPT = "corrupt"  # the source file's length or checksum is wrong
    GONE = "gone"  # the source file vanished
    WRITE_FAILED = "write_failed"  # the destination tier refused the write (ENOSPC, EROFS...)


def checksum(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


def new_file_name(key: BlockKey) -> str:
    """A fresh relative file name for `key`, unique per write."""
    digest = xxhash.xxh3_128_hexdigest(
        f"{key.path}\0{key.version}\0{key.index}".encode("utf-8", "surrogatepass"))
    return f"{key.dataset_id}/{digest[:2]}/{digest}-{uuid.uuid4().hex[:12]}"


def new_extent_name(key: BlockKey) -> str:
    """A fresh relative name for an extent of `key`'s file version."""
    return new_file_name(key._replace(index=-1)) + EXTENT_SUFFIX


def is_extent(file: str) -> bool:
    return file.endswith(EXTENT_SUFFIX)


def block_path(tier: Tier, file: str) -> str:
    return os.path.join(tier.blocks_dir, file)


def write_block(tier: Tier, file: str, data: bytes) -> None:
    """Put `data` at `file` in `tier` all at once (tmp + rename); OSError if the tier refuses."""
    tmp = os.path.join(tier.tmp_dir, uuid.uuid4().hex)
    final = block_path(tier, file)
    try:
        _write_at(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE),
                  0, data)
        try:
            os.rename(tmp, final)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(final), DIR_MODE, exist_ok=True)
            os.rename(tmp, final)
    except BaseException:
        remove_quietly(tmp)
        raise


def create_extent(tier: Tier, file: str) -> None:
    """Create an empty extent file at `file` in `tier`; OSError if the tier refuses."""
    path = block_path(tier, file)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, FILE_MODE)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), DIR_MODE, exist_ok=True)
        fd = os.open(path, flags, FILE_MODE)
    os.close(fd)


def write_into_extent(tier: Tier, file: str, offset: int, data: bytes) -> None:
    """Write `data` at `offset` in the extent `file` of `tier`, made if it is not there yet."""
    path = block_path(tier, file)
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, FILE_MODE)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), DIR_MODE, exist_ok=True)
        fd = os.open(path, flags, FILE_MODE)
    _write_at(fd, offset, data)


def rewrite_in_extent(tier: Tier, file: str, offset: int, data: bytes) -> None:
    """Write `data` over the bytes at `offset` of the extent `file` (the same bytes, its bad
    copy mended: scrub.py); FileNotFoundError if the extent is gone, which is not made again."""
    _write_at(os.open(block_path(tier, file), os.O_WRONLY | os.O_CLOEXEC), offset, data)


def _write_at(fd: int, offset: int, data: bytes) -> None:
    """Write all of `data` at `offset`, then close `fd`."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, offset + len(data) - len(view)):]
    finally:
        os.close(fd)


def read_block(tier: Tier, block: Block) -> bytes:
    """The block's bytes; one byte more when a block file is too long, fewer when short."""
    fd = os.open(block_path(tier, block.file), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if is_extent(block.file):  # the next block's bytes follow
            return os.pread(fd, block.length, block.offset)
        return os.pread(fd, block.length + 1, 0)
    finally:
        os.close(fd)


def copy_block(block: Block, src: Tier, dst: Tier, dst_file: str,
               extent_offset: int | None = None) -> CopyResult:
    """Copy a block to another tier file, verifying length and checksum first: to a new block
    file, or into the extent `dst_file` at `extent_offset`."""
    try:
        data = read_block(src, block)
    except FileNotFoundError:
        return CopyResult.GONE
    if len(data) != block.length or checksum(data) != block.checksum:
        return CopyResult.CORRUPT
    try:
        if extent_offset is None:
            write_block(dst, dst_file, data)
        else:
            write_into_extent(dst, dst_file, extent_offset, data)
    except OSError:
        return CopyResult.WRITE_FAILED
    return CopyResult.COPIED


def remove_quietly(path: str) -> None:
    """Unlink if present; a failure (EROFS...) only leaves an orphan that reconcile removes."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def prepare_tiers(tiers: list[Tier]) -> None:
    """Make each tier's root private and create its block and temporary directories;
    FailedPrecondition, saying what to fix, if it cannot."""
    for tier in tiers:
        try:
            _secure_root(tier)
            make_tier_dirs(tier)
        except OSError as e:
            raise FailedPrecondition(
                f"tier {tier.name}: cannot use {tier.path}: {e.strerror}") from None


def make_tier_dirs(tier: Tier) -> None:
    """The tier's block and temporary directories, made if missing."""
    os.makedirs(tier.blocks_dir, DIR_MODE, exist_ok=True)
    os.makedirs(tier.tmp_dir, DIR_MODE, exist_ok=True)


def _secure_root(tier: Tier) -> None:
    """A tier holds every dataset's bytes, so its root is a real directory owned by eddy's user
    and open to no one else. A root that others could write to, that another user owns, or that
    is a symlink (either could put someone else's files or links where eddy trusts its own) is
    refused; a root only too readable (0755, as kubelet creates a hostPath) is made 0700."""
    os.makedirs(tier.path, DIR_MODE, exist_ok=True)
    st = os.lstat(tier.path)
    if stat.S_ISLNK(st.st_mode):
        raise FailedPrecondition(f"tier {tier.name}: {tier.path} is a symlink; give the "
                                 f"directory's real path ({os.path.realpath(tier.path)})")
    if not stat.S_ISDIR(st.st_mode):
        raise FailedPrecondition(f"tier {tier.name}: {tier.path} is not a directory")
    if st.st_uid != os.geteuid():
        raise FailedPrecondition(f"tier {tier.name}: {tier.path} is owned by uid {st.st_uid}, "
                                 f"not by eddy's (uid {os.geteuid()}): chown it, or give "
                                 f"another directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise FailedPrecondition(f"tier {tier.name}: {tier.path} is writable by others (mode "
                                 f"{mode:04o}): make it 0700 (chmod 0700 {tier.path}), or give "
                                 f"another directory")
    if mode & 0o077:
        os.chmod(tier.path, 0o700)
