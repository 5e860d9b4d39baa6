"""What a mount daemon reads through and writes into, by where its blocks come from.

`engine` (the daemon's request, request.py) says: `{"endpoint": ...}` is the node plugin's
cache engine, read through a `DatasetReader` that falls back to the source while the engine is
away; `{"tiers": [...], "state_dir": DIR}` runs an engine in this process (`eddy mount`);
nothing reads the source directly. A writable volume writes into its source: a directory
through `LocalWriter`, a bucket through `S3Writer`, whose staged uploads live in the volume's
uploads directory and are retried in the background until S3 takes them.
"""

from __future__ import annotations

import threading

from cache_engine.spec import DatasetSpec
from cache_engine.ufs import RedirectPolicy, open_ufs
from cache_engine.ufs.local import LocalUfs
from cache_engine.ufs.local_writes import LocalWriter
from eddy.base.errors import InvalidArgument, NotFound
from eddy.base.sockets import socket_path


class Sources:
    """What one mount reads through (`backend`), what it writes into (`writer()`), and
    what to close after it."""

    def __init__(self, spec: DatasetSpec, secrets: dict[str, str], engine: dict | None,
                 volume_id: str, uploads: str = ""):
        self.host = None
        self.client = None
        self._spec = spec
        self._secrets = secrets
        self._uploads = uploads  # where an s3:// volume stages what it writes
        self._written = None  # the source backend the writer writes through
        self._stop = threading.Event()
        engine = engine or {}
        redirects = RedirectPolicy.from_flags(engine.get("redirect_allow") or [])
        if engine.get("endpoint"):
            from cache_engine.client import EngineClient
            from cache_engine.reader import DatasetReader

            self.client = EngineClient(engine["endpoint"])
            try:
                self.backend = DatasetReader(self.client, spec, secrets,
                                             direct=lambda: open_ufs(spec, secrets, redirects),
                                             volume_id=volume_id)
            except BaseException:
                self.client.close()
                raise
        elif engine.get("state_dir"):
            from cache_engine.host import EngineHost, ScrubPolicy, StateDirBusy
            from cache_engine.reader import DatasetReader

            try:
                self.host = EngineHost(engine.get("tiers") or [], engine["state_dir"], threads=4,
                                       redirects=redirects,
                                       scrub=ScrubPolicy(**engine.get("scrub", {})))
            except StateDirBusy as e:
                raise StateDirBusy(
                    f"{e} (another mount is using it: give this one its own --state-dir)"
                ) from None
            try:
                self.backend = DatasetReader(self.host.engine, spec, secrets,
                                             volume_id=volume_id)
                if engine.get("socket"):
                    self.host.serve(socket_path(engine["socket"]),
                                    _own_volume(self.host.engine, volume_id, spec, secrets))
            except BaseException:
                self.host.close()
                raise
        else:
            self.backend = open_ufs(spec, secrets, redirects)

    def writer(self):
        """What writes into the volume's source: a `LocalWriter` or an `S3Writer`."""
        scheme = self._spec.source.scheme
        if scheme == "local":
            self._written = LocalUfs(self._spec.source.root)
            return LocalWriter(self._written)
        if scheme != "s3" or not self._uploads:
            raise InvalidArgument(f"source {self._spec.source.shown}: only directories and "
                                  "s3:// buckets (with an uploads directory) are written")
        from cache_engine.ufs.s3 import S3Ufs
        from cache_engine.ufs.s3_staging import StagingDir
        from cache_engine.ufs.s3_writer import S3Writer
        from cache_engine.ufs.s3_writes import S3Writes

        self._written = S3Ufs(self._spec, self._secrets)
        writer = S3Writer(S3Writes(self._written, StagingDir(self._uploads)))
        threading.Thread(target=writer.retry_pending, args=(self._stop,), daemon=True,
                         name="s3-pending-uploads").start()
        return writer

    def close(self) -> None:
        self._stop.set()
        if self._written is not None:
            self._written.close()
        self.backend.close()
        if self.client is not None:
            self.client.close()
        if self.host is not None:
            self.host.close()


def _own_volume(engine, volume_id: str, spec: DatasetSpec, secrets: dict[str, str]):
    """The one volume `eddy status` and `eddy preload --mountpoint` may name on this mount."""
    from cache_engine.host import Volumes

    def dataset_of(name: str) -> str:
        if name != volume_id:
            raise NotFound(f"volume {name} is not this mount's ({volume_id})")
        return engine.open_dataset(spec, secrets, volume_id).dataset_id

    return Volumes(lambda: [volume_id], dataset_of)
