"""The one in-memory source for tests: counts what it is asked, can change files, hold
directories and symlinks, fail on demand, and be slow.

Inject it instead of patching a real backend: `CacheEngine(open_ufs=lambda spec, secrets:
ufs)`, or `DatasetFs(ufs, ttl)` for a mount without an engine.

    ufs = FakeUfs({"a/b.bin": b"...", "empty-dir": None, "link": ("->", "a/b.bin")})
    ufs.set("a/b.bin", b"new bytes")   # a new version
    ufs.fail = UfsUnavailable("down")  # every later call raises it, until set to None
    ufs.hold("a/b.bin")                # calls on that path hang (a sick source) until
    ufs.release()                      # this
"""

from __future__ import annotations

import errno
import threading
import time

from cache_engine.ufs.base import Entry, Kind, UfsBackend, VersionChanged, clean_path


class FakeUfs(UfsBackend):
    """`tree` maps a path to bytes (a file), None (a directory) or ("->", target) (a symlink);
    directories that hold something need not be named. Every file version is "v<n>", n
    counting up from 1 over every file set, in order."""

    def __init__(self, tree: dict, delay: float = 0.0, mtime_ns: int = 7):
        self.description = "fake://"
        self.delay = delay  # seconds each read sleeps, to widen races in tests
        self.mtime_ns = mtime_ns
        self.fail: Exception | None = None  # raised by every call while set
        self.requests = 0  # every stat, list and read
        self.bytes_read = 0
        self.reads: list[tuple[str, int, int]] = []  # (path, offset, length) of each read
        self.calls: list[tuple[str, str]] = []  # (operation, path) of every call
        self.closed = False
        self._lock = threading.Lock()
        self._files: dict[str, tuple[bytes, str]] = {}
        self._dirs: set[str] = {""}
        self._links: dict[str, str] = {}
        self._generation = 0
        self._held: set[str] | None = set()  # paths whose calls hang; None: every path
        self._gate = threading.Event()  # cleared while something is held
        self._gate.set()
        for path, node in tree.items():
            if node is None:
                self._dirs.add(clean_path(path))
            elif isinstance(node, tuple):
                self._links[clean_path(path)] = node[1]
            else:
                self.set(path, node)

    def set(self, path: str, data: bytes) -> str:
        """Create or change a file; returns its new version."""
        with self._lock:
            self._generation += 1
            version = f"v{self._generation}"
            self._files[clean_path(path)] = (bytes(data), version)
            return version

    change = set

    def data(self, path: str) -> bytes:
        return self._files[clean_path(path)][0]

    def count(self, operation: str) -> int:
        """How many calls of `operation` ("stat", "list", "read", ...) were made."""
        return sum(1 for op, _ in self.calls if op == operation)

    def hold(self, *paths: str) -> None:
        """Calls on `paths` (every path if none is named) hang until `release`."""
        with self._lock:
            self._held = {clean_path(p) for p in paths} if paths else None
            self._gate.clear()

    def release(self) -> None:
        with self._lock:
            self._held = set()
            self._gate.set()

    def _call(self, operation: str, path: str) -> str:
        rel = clean_path(path)
        with self._lock:
            self.requests += 1
            self.calls.append((operation, rel))
            held = self._held is None or rel in self._held
        if held:
            self._gate.wait()
        if self.fail is not None:
            raise self.fail
        return rel

    def _is_dir(self, rel: str) -> bool:
        return rel in self._dirs or any(
            p.startswith(rel + "/") for p in (*self._files, *self._links, *self._dirs))

    def _entry(self, rel: str) -> Entry | None:
        if rel in self._files:
            data, version = self._files[rel]
            return Entry(rel, Kind.FILE, len(data), self.mtime_ns, version)
        if rel in self._links:
            target = self._links[rel]
            return Entry(rel, Kind.SYMLINK, len(target), self.mtime_ns, "", target)
        if self._is_dir(rel):
            return Entry(rel, Kind.DIR, 0, self.mtime_ns, "dir")
        return None

    def stat(self, path: str) -> Entry:
        rel = self._call("stat", path)
        with self._lock:
            entry = self._entry(rel)
        if entry is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", rel)
        return entry

    def list(self, path: str) -> list[Entry]:
        rel = self._call("list", path)
        prefix = rel + "/" if rel else ""
        with self._lock:
            if rel in self._files:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", rel)
            if not self._is_dir(rel):
                raise FileNotFoundError(errno.ENOENT, "no such directory", rel)
            names = {p[len(prefix):].partition("/")[0]
                     for p in (*self._files, *self._links, *self._dirs)
                     if p.startswith(prefix) and p != rel}
            return [self._entry(prefix + name) for name in sorted(names)]

    def read(self, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        rel = self._call("read", path)
        with self._lock:
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
