"""An in-memory source for tests: counts what it is asked, can change files, can be slow.

Inject it through `CacheEngine(open_ufs=...)` instead of patching a real backend:

    ufs = FakeUfs({"a/b.bin": b"..."})
    engine = CacheEngine(tiers, state_dir, open_ufs=lambda spec, secrets: ufs)
"""

from __future__ import annotations

import errno
import threading
import time

from .base import Entry, Kind, UfsBackend, VersionChanged, clean_path


class FakeUfs(UfsBackend):
    def __init__(self, files: dict[str, bytes], delay: float = 0.0):
        self.description = "fake://"
        self.delay = delay  # seconds each read sleeps, to widen races in tests
        self.requests = 0  # every stat, list and read
        self.bytes_read = 0
        self.reads: list[tuple[str, int, int]] = []  # (path, offset, length) of each read
        self.closed = False
        self._lock = threading.Lock()
        self._files: dict[str, tuple[bytes, str]] = {}
        self._generation = 0
        for path, data in files.items():
            self.set(path, data)

    def set(self, path: str, data: bytes) -> str:
        """Create or change a file; returns its new version."""
        with self._lock:
            self._generation += 1
            version = f"v{self._generation}"
            self._files[clean_path(path)] = (bytes(data), version)
            return version

    def data(self, path: str) -> bytes:
        return self._files[clean_path(path)][0]

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def _is_dir(self, rel: str) -> bool:
        return rel == "" or any(p.startswith(rel + "/") for p in self._files)

    def stat(self, path: str) -> Entry:
        self._count()
        rel = clean_path(path)
        with self._lock:
            if rel in self._files:
                data, version = self._files[rel]
                return Entry(rel, Kind.FILE, len(data), 0, version)
            if self._is_dir(rel):
                return Entry(rel, Kind.DIR, 0, 0, "dir")
        raise FileNotFoundError(errno.ENOENT, "no such file", rel)

    def list(self, path: str) -> list[Entry]:
        self._count()
        rel = clean_path(path)
        prefix = rel + "/" if rel else ""
        with self._lock:
            if rel in self._files:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", rel)
            if not self._is_dir(rel):
                raise FileNotFoundError(errno.ENOENT, "no such directory", rel)
            children: dict[str, Entry] = {}
            for p, (data, version) in self._files.items():
                if not p.startswith(prefix):
                    continue
                name, _, rest = p[len(prefix):].partition("/")
                child = prefix + name
                children[name] = (Entry(child, Kind.DIR, 0, 0, "dir") if rest
                                  else Entry(child, Kind.FILE, len(data), 0, version))
        return [children[name] for name in sorted(children)]

    def read(self, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        rel = clean_path(path)
        with self._lock:
            self.requests += 1
            if rel not in self._files:
                raise FileNotFoundError(errno.ENOENT, "no such file", rel)
            data, current = self._files[rel]
            if version is not None and version != current:
                raise VersionChanged(errno.ESTALE, "file changed at the source", rel)
            out = data[offset:offset + length]
            self.bytes_read += len(out)
            self.reads.append((rel, offset, length))
        if self.delay:
            time.sleep(self.delay)
        return out

    def close(self) -> None:
        self.closed = True
