"""What a writer-mode mount changed at the source, made known to the whole node at once.

A mount daemon that wrote a file (at close or fsync), created, renamed or removed something
tells the engine which paths changed (`CacheEngine.changed`). The engine then forgets what it
knew of them (their records and their parents' listings, so every volume of the dataset on
this node sees the change at its next lookup, not one metadataTTL later), drops the cached
blocks of any version but the one the source holds now, and, for a written file, loads the new
version in the background: write-through, so the next read of it is a cache hit. Other nodes
see the change when their metadataTTL runs out (close-to-open on one node; README "Writable
volumes").
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .blocks import BlockKey
from .ufs.base import Kind, clean_path

if TYPE_CHECKING:
    from .dataset import Dataset
    from .fetch import BlockFetcher
    from .placement import Placement
    from .table import BlockTable


def apply_changes(ds: Dataset, paths: Iterable[str], load: bool, tree: bool,
                  table: BlockTable, lock: threading.Condition, places: Placement,
                  fetcher: BlockFetcher) -> None:
    """Forget `paths` (with `tree`, everything below them too), drop their stale blocks, and
    with `load` fetch each written file's new version (see the module docstring)."""
    for path in map(clean_path, paths):
        ds.meta.forget_changed(path, tree)
        try:
            entry = ds.stat_fresh(path)[0]
        except (FileNotFoundError, NotADirectoryError):
            entry = None
        current = entry.version if entry is not None and entry.kind is Kind.FILE else None
        below = f"{path}/"
        with lock:
            stale = [key for key in table.dataset_blocks(ds.id)
                     if (key.path == path or tree and key.path.startswith(below))
                     and key.version != current]
        for key in stale:
            places.drop_corrupt(key, counter=None)
        if load and current and entry.size:
            fetcher.schedule(ds, BlockKey(ds.id, path, current, 0), entry.size, 0,
                             ds.block_count(entry.size), limit=None)
