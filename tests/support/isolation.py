"""A node with a healthy volume read without pause while a test breaks another one.

What tests/csi/test_isolation.py and test_load.py share: `Node`, one real `eddy serve` (mounts,
engine, metrics on 127.0.0.1) and the volumes a test stages on it; `SteadyReader`, a thread
that reads every file of a mount over and over, checks each against its sha256 and times each
read, so a test can print the volume's MiB/s before and during a fault and assert it never got
a wrong byte, an error or a read that stalled; `within`, which runs one read of the sick volume
and fails the test if it has not returned in time.

    node = Node(tmp_path, tiers=[f"MEM:{mem}:48Mi"]).start()
    well = node.stage("well", {"source": f"local://{root}"})
    with SteadyReader(well.mount, hashes) as healthy, healthy.during("a dead source"):
        ...  # break the sick volume, check its reads, mend it
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import signal
import socket
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .driver import (
    DriverProcess,
    cleanup_mounts,
    create,
    mounts_under,
    stage_and_publish,
    tier_args,
    unpublish_and_unstage,
)
from .wait import wait_for

MiB = 1 << 20
STALL = 10.0  # no read of the healthy volume may take longer, whatever the fault
WINDOW = 4.0  # seconds a rate is measured over, at least


def write_files(root, files: dict[str, bytes]) -> dict[str, str]:
    """Write `files` (name: bytes) under `root`; their sha256 by name."""
    os.makedirs(root, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def rss_mib(pid: int) -> float:
    """The resident memory of process `pid` (VmRSS), in MiB; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def daemons_under(path: str) -> list[int]:
    """Pids of mount daemons whose mountpoint lies under `path`."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "csi.fuse" in argv and any(a.startswith(f"--mountpoint={path}") for a in argv):
            found.append(int(entry))
    return found


def within(seconds: float, call, *args) -> tuple[object, BaseException | None, float]:
    """(result, None, seconds taken) of `call(*args)`, or (None, its exception, seconds taken);
    fails the test if it has not returned after `seconds` (the thread is left blocked: a hung
    reader, which the test's teardown ends by killing the mount's processes)."""
    outcome: list = []

    def run() -> None:
        start = time.monotonic()
        try:
            value, error = call(*args), None
        except Exception as e:  # noqa: BLE001 - handed to the caller
            value, error = None, e
        outcome.append((value, error, time.monotonic() - start))

    thread = threading.Thread(target=run, daemon=True, name="bounded-call")
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise AssertionError(f"{getattr(call, '__name__', call)}{args} hung for {seconds} s")
    return outcome[0]


def read_file(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def drop_cached(path) -> None:
    """Drop the kernel's copy of `path`'s pages: the next read asks the mount."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_range(path, offset: int, length: int) -> bytes:
    """`length` bytes of `path` from `offset` (fewer at its end), by as many preads as it takes."""
    out = bytearray()
    with open(path, "rb") as f:
        while len(out) < length and (data := os.pread(f.fileno(), length - len(out),
                                                      offset + len(out))):
            out += data
    return bytes(out)


@dataclasses.dataclass
class Volume:
    """A volume staged on the node and published to one pod."""

    name: str
    csi: object  # the csi_pb2.Volume CreateVolume returned
    staging: str
    mount: str  # the pod's target path

    @property
    def volume_id(self) -> str:
        return self.csi.volume_id


class Node:
    """One `eddy serve --mode all` under `tmp_path` with `tiers`, and its volumes.

    Its kubelet directory is `tmp_path`; staging paths and targets lie in `tmp_path/kubelet`.
    `close()` ends it whatever state the test left it in: the plugin, the mount daemons under
    `tmp_path` (by pid), every mount under `tmp_path/kubelet`.
    """

    def __init__(self, tmp_path, tiers: list[str], extra_args: tuple[str, ...] = ()):
        self.tmp_path = tmp_path
        self.kubelet = str(tmp_path / "kubelet")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.metrics_port = s.getsockname()[1]
        args = (*tier_args(*tiers), "--metrics-port", str(self.metrics_port),
                "--metrics-address", "127.0.0.1", *extra_args)
        self.driver = DriverProcess(str(tmp_path / "driver"), extra_args=args)
        self.volumes: dict[str, Volume] = {}

    def start(self) -> Node:
        self.driver.start()
        return self

    def restart(self) -> None:
        """SIGTERM the plugin and start it again; the mount daemons live on meanwhile."""
        self.driver.stop()
        self.driver.start()

    def stage(self, name: str, parameters: dict[str, str], secrets=None) -> Volume:
        volume = create(self.driver, f"pvc-{name}", parameters)
        staging, [mount] = stage_and_publish(self.driver, self.tmp_path, volume, secrets,
                                             targets=(f"pod-{name}",))
        self.volumes[name] = Volume(name, volume, staging, mount)
        return self.volumes[name]

    def unstage(self, volume: Volume) -> None:
        """Unpublish and unstage `volume`; its daemon must be gone and nothing left mounted."""
        unpublish_and_unstage(self.driver, volume.csi, volume.staging, [volume.mount])
        del self.volumes[volume.name]
        wait_for(lambda: not daemons_under(volume.staging), 10, f"{volume.name}'s daemon to exit")
        assert not mounts_under(volume.staging) and not mounts_under(volume.mount)

    def unstage_all(self) -> None:
        """Every volume unstaged; then nothing at all may be mounted under the kubelet dir."""
        for volume in list(self.volumes.values()):
            self.unstage(volume)
        assert mounts_under(self.kubelet) == []
        assert daemons_under(str(self.tmp_path)) == []

    def metrics(self) -> dict[str, float]:
        """The plugin's Prometheus samples, as "name{label='value'}": value."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {f"{s.name}{{{','.join(f'{k}={v!r}' for k, v in s.labels.items())}}}": s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def processes(self) -> dict[str, int]:
        """The pid of every eddy process of this node: the plugin, each volume's daemon."""
        pids = {"plugin": self.driver.proc.pid}
        for volume in self.volumes.values():
            for pid in daemons_under(volume.staging):
                pids[f"daemon {volume.name}"] = pid
        return pids

    def rss(self) -> dict[str, float]:
        return {name: rss_mib(pid) for name, pid in self.processes().items()}

    def errors_logged(self) -> list[dict]:
        """The plugin's and its daemons' log events at level error or worse."""
        found = []
        with open(self.driver.log_path, errors="replace") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("level") in ("error", "critical"):
                    found.append(event)
        return found

    def close(self) -> None:
        self.driver.stop()
        for pid in daemons_under(str(self.tmp_path)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        cleanup_mounts(self.kubelet)


class SteadyReader:
    """Reads every file of `mount` over and over in a thread, each checked against its sha256
    (`hashes`, by name) and each open and read() timed; the kernel's copy of a file is dropped
    after each read, so every pass asks the mount again.

    `during(fault)` measures the rate while its body runs against the rate before, prints both,
    and asserts the reader never got a wrong byte or an error and no call took `STALL` seconds.
    """

    def __init__(self, mount: str, hashes: dict[str, str], chunk: int = MiB):
        self.mount = mount
        self.hashes = hashes
        self.chunk = chunk
        self.passes = 0
        self.worst = 0.0  # the longest open or read(), seconds
        self.errors: list[str] = []
        self.mismatches: list[str] = []
        self._done: list[tuple[float, int]] = []  # (when, bytes) of every read() returned
        self._started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="steady-reader")

    def __enter__(self) -> SteadyReader:
        return self.start()

    def start(self) -> SteadyReader:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop reading (the pass in progress ends at the file it is in) and check."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(STALL * 3)
            assert not self._thread.is_alive(), "the healthy volume's reader hung"
        self.check()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, want in self.hashes.items():
                if self._stop.is_set():
                    return
                self._read(name, want)
            self.passes += 1

    def _timed(self, call, *args):
        start = time.monotonic()
        try:
            return call(*args)
        finally:
            self.worst = max(self.worst, time.monotonic() - start)

    def _read(self, name: str, want: str) -> None:
        digest = hashlib.sha256()
        try:
            fd = self._timed(os.open, os.path.join(self.mount, name), os.O_RDONLY)
            try:
                while data := self._timed(os.read, fd, self.chunk):
                    digest.update(data)
                    self._done.append((time.monotonic(), len(data)))
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except OSError as e:
            self.errors.append(f"{name}: {e}")
            return
        if digest.hexdigest() != want:
            self.mismatches.append(name)

    def rate(self, start: float, end: float) -> float:
        """MiB/s read between `start` and `end` (monotonic times)."""
        done = sum(n for when, n in list(self._done) if start <= when <= end)
        return done / MiB / max(end - start, 1e-6)

    def check(self) -> None:
        assert self.errors == [], f"the healthy volume's reads failed: {self.errors[:5]}"
        assert self.mismatches == [], f"the healthy volume read wrong bytes: {self.mismatches}"
        assert self.worst < STALL, f"a read of the healthy volume took {self.worst:.1f} s"

    @contextlib.contextmanager
    def during(self, fault: str, seconds: float = WINDOW):
        """Time the body, `seconds` at least (a rate needs time to be one); print the healthy
        volume's rate before it and during it."""
        wait_for(lambda: (self.passes >= 1 and time.monotonic() - self._started >= WINDOW)
                 or self.errors or self.mismatches, 60, "the healthy volume's first pass")
        self.check()
        start = time.monotonic()
        alone = self.rate(max(self._started, start - WINDOW), start)
        yield
        wait_for(lambda: time.monotonic() - start >= seconds, seconds + 1, "a measured window")
        end = time.monotonic()
        print(f"\nhealthy volume: {alone:.0f} MiB/s alone, {self.rate(start, end):.0f} MiB/s "
              f"during {fault} ({end - start:.1f} s; longest call {self.worst:.2f} s)")
        self.check()


class SickReaders:
    """Threads that read the sick volume over and over while a fault lasts, so the fault is
    busy all through the healthy volume's window; each read must give its bytes or an errno
    of `allowed` within `bound` seconds (checked at `stop`, with a count of each outcome).

    `reads` are (path, offset, length or None for the whole file, the bytes it gives). They
    go on for `seconds` at least: the healthy volume's window (`SteadyReader.during`).
    """

    def __init__(self, reads: list[tuple[str, int, int | None, bytes]], allowed: set[int],
                 bound: float, threads: int = 2, seconds: float = WINDOW):
        self.reads = reads
        self.seconds = seconds
        self._started = 0.0
        self.allowed = allowed
        self.bound = bound
        self.outcomes: dict[str, int] = {}
        self.worst = 0.0
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                          name=f"sick-reader-{i}") for i in range(threads)]

    def __enter__(self) -> SickReaders:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, first: int) -> None:
        i = first
        while not self._stop.is_set():
            path, offset, length, want = self.reads[i % len(self.reads)]
            i += 1
            start = time.monotonic()
            try:
                data = read_file(path) if length is None else read_range(path, offset, length)
                outcome = "right" if data == want else "wrong"
            except OSError as e:
                outcome = errno.errorcode.get(e.errno, str(e.errno))
                if e.errno not in self.allowed:
                    self.wrong.append(f"{path}@{offset}: {e}")
            if outcome == "wrong":
                self.wrong.append(f"{path}@{offset}: wrong bytes")
            with contextlib.suppress(OSError):  # the next read asks the mount again
                drop_cached(path)
            self.worst = max(self.worst, time.monotonic() - start)
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def stop(self) -> None:
        """Stop once `seconds` have passed since the start; check every read."""
        wait_for(lambda: time.monotonic() - self._started >= self.seconds, self.seconds + 1,
                 "the sick volume's readers' time")
        self._stop.set()
        for thread in self._threads:
            thread.join(self.bound * 2)
            assert not thread.is_alive(), "a read of the sick volume never returned"
        print(f"sick volume's reads: {dict(sorted(self.outcomes.items()))}, "
              f"longest {self.worst:.1f} s")
        assert self.wrong == [], self.wrong[:5]
        assert self.worst < self.bound, f"a read of the sick volume took {self.worst:.1f} s"
