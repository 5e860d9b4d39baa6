"""Start-up reconciliation: make the tier directories and the block index agree.

Whatever instant a previous engine died at, the order of its steps (file complete before its
row, row gone before its file) leaves only three kinds of debris, removed here before the
engine serves anything: files in `tmp/` (torn writes), block files and extents without a row
(a write or move that did not reach its commit, or an unlink that did not happen), and rows
whose file is missing or too short (a tier wiped, e.g. tmpfs after a reboot). An extent stays
while any row points into it; its bytes that no row covers are returned as held, so the engine
keeps counting them against the tier until the extent goes. Files without a row are removed,
never adopted: their names hash the block key, so no row can be rebuilt from one (after a
corrupt index was moved aside, that is every file; `bytes_freed` says how much). The node's
HMAC key for dataset identities also lives in the state directory and is created here once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from dataclasses import dataclass, field

from eddy.base import log

from .blocks import Block, is_extent, make_tier_dirs, remove_quietly
from .index import BlockIndex, IndexWriteFailed
from .tiers import Tier

NODE_KEY_BYTES = 32
_log = log.get("cache_engine.recovery")


@dataclass
class Reconciled:
    """What `reconcile` found at start: the rows kept (the engine's table starts with
    them), extent bytes no row covers, and what was cleaned up."""

    blocks: list[Block]
    held: dict[tuple[str, str], int] = field(default_factory=dict)  # (tier, extent) -> bytes
    tmp_removed: int = 0
    orphans_removed: int = 0
    bytes_freed: int = 0  # bytes of the files without a row
    rows_dropped: int = 0


def node_key(state_dir: str) -> bytes:
    """The node's 32-byte HMAC key in `<state_dir>/engine.key` (0600), created once."""
    path = os.path.join(state_dir, "engine.key")
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        key = f.read()
        if len(key) == NODE_KEY_BYTES:
            return key
        _log.warning("engine_key.invalid", path=path, length=len(key))
    key = os.urandom(NODE_KEY_BYTES)
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            if os.write(fd, key) != NODE_KEY_BYTES:
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as e:  # a full or read-only state disk must not stop the engine
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _log.warning("engine_key.not_saved", path=path, error=str(e),
                     consequence="dataset ids change at the next start: blocks cached until "
                                 "then are not found again")
    return key


def _clear_dir(path: str) -> int:
    removed = 0
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            remove_quietly(entry.path)
        removed += 1
    return removed


def _scan(tier: Tier) -> dict[str, int]:
    """Every file under the tier's blocks/ as relative path -> size."""
    out = {}
    root = tier.blocks_dir
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            try:
                out[os.path.relpath(full, root)] = os.lstat(full).st_size
            except FileNotFoundError:
                continue
    return out


def _remove_empty_dirs(root: str) -> None:
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        if dirpath != root:
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def reconcile(index: BlockIndex, tiers: list[Tier]) -> Reconciled:
    """Clean every tier, drop rows without a sound file; return the blocks that remain."""
    result = Reconciled(blocks=[])
    on_disk: dict[str, dict[str, int]] = {}
    for tier in tiers:
        make_tier_dirs(tier)
        result.tmp_removed += _clear_dir(tier.tmp_dir)
        on_disk[tier.name] = _scan(tier)
    dropped = []
    covered: dict[tuple[str, str], int] = {}  # (tier, file) -> bytes its sound rows cover
    for block in index.load():
        size = on_disk.get(block.tier, {}).get(block.file)
        sound = size == block.length if not is_extent(block.file) else \
            size is not None and size >= block.offset + block.length
        if not sound:
            dropped.append(block.key)
            continue
        result.blocks.append(block)
        where = (block.tier, block.file)
        covered[where] = covered.get(where, 0) + block.length
    orphans: list[tuple[Tier, str]] = []
    for tier in tiers:
        for rel, size in on_disk[tier.name].items():
            if (tier.name, rel) not in covered:
                orphans.append((tier, rel))
            elif size > covered[(tier.name, rel)]:
                result.held[(tier.name, rel)] = size - covered[(tier.name, rel)]
    try:
        index.delete_many(dropped)  # rows first: a crash here leaves files, never rows
    except IndexWriteFailed:
        pass  # the rows stay, unused, and are dropped again at the next start
    for tier, rel in orphans:
        remove_quietly(os.path.join(tier.blocks_dir, rel))
        result.bytes_freed += on_disk[tier.name][rel]
    for tier in tiers:
        _remove_empty_dirs(tier.blocks_dir)
    result.rows_dropped, result.orphans_removed = len(dropped), len(orphans)
    return result
