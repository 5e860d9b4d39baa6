"""What the node service asks of the node's cache engine about one staged volume.

The engine runs in the node plugin's process, so these are plain calls: open the volume's
dataset, start the `preload` the volume asked for (in the background: staging never waits for
it), and report the volume's cache usage and health for NodeGetVolumeStats.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from cache_engine.spec import parse_parameters
from cache_engine.status import DatasetStatus, Phase
from eddy.base import log
from eddy.base.errors import EddyError

from .state.staging import StagedVolume

if TYPE_CHECKING:  # for annotations only: csi gets its engine from cache_engine.host
    from cache_engine.host import CacheEngine


class VolumeCache:
    """What the node service asks the cache engine about one staged volume: open its dataset,
    start the preload its parameters ask for, and the cache's view of it for volume stats."""

    def __init__(self, engine: CacheEngine):
        self.engine = engine
        self._log = log.get("csi.node")
        self._ids: dict[str, str] = {}  # volume id -> dataset id, while staged

    def open(self, vol: StagedVolume, secrets: dict[str, str]) -> str:
        """Open the volume's dataset in the engine; its id."""
        spec = parse_parameters(vol.parameters)
        ds = self._ids[vol.volume_id] = \
            self.engine.open_dataset(spec, secrets, vol.volume_id).dataset_id
        return ds

    def dataset_of(self, vol: StagedVolume, secrets: Callable[[], dict[str, str]]) -> str:
        """The volume's dataset id; `secrets` is read only if the dataset must be opened.

        Kubelet asks for volume stats every minute: opening the dataset each time would build
        a new source backend (and, for HTTP, send a request) for nothing."""
        ds = self._ids.get(vol.volume_id)
        return ds if ds is not None else self.open(vol, secrets())

    def forget(self, volume_id: str) -> None:
        """The volume was unstaged: a later staging may name other parameters or secrets, and
        its settings stop counting for a dataset other volumes still read."""
        self._ids.pop(volume_id, None)
        self.engine.release_volume(volume_id)

    def start_preload(self, vol: StagedVolume, secrets: dict[str, str]) -> None:
        """Start the preload named by the volume's `preload` parameter, if any, in the
        background; failures are logged and shown by `eddy status`, never fail staging."""
        wanted = parse_parameters(vol.parameters).preload
        if not wanted:
            return
        paths = () if wanted is True else tuple(wanted)

        def run() -> None:
            try:
                self.engine.preload(self.open(vol, secrets), paths)
            except Exception as e:  # noqa: BLE001 - reported, staging already succeeded
                self._log.warning("preload.not_started", volume_id=vol.volume_id, error=str(e))

        threading.Thread(target=run, name=f"preload-{vol.volume_id[:12]}", daemon=True).start()

    def status(self, vol: StagedVolume, secrets: Callable[[], dict[str, str]]) -> DatasetStatus:
        return self.engine.dataset_status(self.dataset_of(vol, secrets))

    def stats(self, vol: StagedVolume, secrets: Callable[[], dict[str, str]], abnormal: bool,
              message: str) -> tuple[bool, str, tuple[int, int] | None]:
        """NodeGetVolumeStats of a volume whose mount is as `abnormal` and `message` say:
        (abnormal, message, (cache capacity, cached bytes) or None if the engine cannot say)."""
        try:
            row = self.status(vol, secrets)
        except (EddyError, OSError) as e:
            return True, f"cache engine cannot open the dataset: {e}", None
        if not abnormal:
            abnormal, message = condition(row, message)
        return abnormal, message, (row.capacity or 0, row.cached_bytes)


def condition(row: DatasetStatus, mount: str) -> tuple[bool, str]:
    """(abnormal, message) of a volume whose mount is well (`mount` says how), from its
    dataset's status."""
    if row.phase is Phase.SOURCE_UNAVAILABLE:
        return True, f"source {row.source} is unavailable: {row.message}"
    return False, f"{mount}; {row.phase.value}"
