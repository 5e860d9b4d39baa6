"""The passthrough prototype of docs/passthrough.md: one file, served two ways, timed.

    prototype.py WORKDIR [SIZE_MIB]          (run by prototype.sh, with its venv's python)

Writes SIZE_MIB (default 2048) of random bytes to a tmpfs file, then mounts a one-file
filesystem over it twice per mode: "read" answers every read request with os.pread (what a
daemon does today), "passthrough" registers the file as the backing file of each open and the
kernel reads it itself. Each mount: drop the page cache, read the file twice with 1 MiB
reads, check every byte against the tmpfs file, unmount. Then the tmpfs file read directly.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import subprocess
import sys
import time

CHUNK = 1 << 20
BACKING_OPEN = 0x4010E501  # FUSE_DEV_IOC_BACKING_OPEN: struct {int32 fd; uint32 flags; u64}
BACKING_CLOSE = 0x4004E502  # FUSE_DEV_IOC_BACKING_CLOSE: the uint32 backing id
NAME = b"data"


def serve(mountpoint: str, path: str, mode: str) -> None:
    import pyfuse3
    import trio

    size = os.path.getsize(path)

    class OneFile(pyfuse3.Operations):
        enable_passthrough = mode == "passthrough"

        def __init__(self):
            super().__init__()
            self.fd = os.open(path, os.O_RDONLY)
            self.backing_id = 0
            self.opens = 0

        async def getattr(self, inode, ctx=None):
            attr = pyfuse3.EntryAttributes()
            attr.st_ino = inode
            attr.st_mode = (stat.S_IFDIR | 0o755) if inode == pyfuse3.ROOT_INODE \
                else (stat.S_IFREG | 0o444)
            attr.st_size = 0 if inode == pyfuse3.ROOT_INODE else size
            attr.attr_timeout = attr.entry_timeout = 300
            return attr

        async def lookup(self, parent, name, ctx=None):
            if name != NAME:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return await self.getattr(2)

        async def open(self, inode, flags, ctx=None):
            if mode != "passthrough":
                return pyfuse3.FileInfo(fh=1, keep_cache=True)
            if not self.backing_id:
                arg = bytearray(struct.pack("iIQ", self.fd, 0, 0))  # mutable: keeps the result
                self.backing_id = fcntl.ioctl(pyfuse3.get_session_fd(), BACKING_OPEN, arg, True)
            self.opens += 1
            # The kernel refuses FOPEN_KEEP_CACHE beside FOPEN_PASSTHROUGH (open fails, EIO).
            return pyfuse3.FileInfo(fh=1, keep_cache=False, backing_id=self.backing_id)

        async def read(self, fh, off, size):
            return os.pread(self.fd, size, off)

        async def release(self, fh):
            if self.backing_id:
                self.opens -= 1
                if not self.opens:  # the inode's last open file: the id may go
                    arg = bytearray(struct.pack("I", self.backing_id))
                    fcntl.ioctl(pyfuse3.get_session_fd(), BACKING_CLOSE, arg, True)
                    self.backing_id = 0

    options = set(pyfuse3.default_options) | {"fsname=eddy-passthrough-prototype"}
    pyfuse3.init(OneFile(), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


def read_mb_s(path: str) -> float:
    fd = os.open(path, os.O_RDONLY)
    total, start = 0, time.perf_counter()
    try:
        while chunk := os.read(fd, CHUNK):
            total += len(chunk)
    finally:
        os.close(fd)
    return total / (time.perf_counter() - start) / 1e6


def same(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False
            if not x:
                return True


def drop_page_cache() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def measure(workdir: str, path: str, mode: str) -> tuple[float, float, bool]:
    mountpoint = os.path.join(workdir, "mnt")
    os.makedirs(mountpoint, exist_ok=True)
    server = subprocess.Popen([sys.executable, __file__, "serve", mountpoint, path, mode])
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(mountpoint):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {mode} server did not mount {mountpoint}")
            time.sleep(0.05)
        drop_page_cache()
        served = os.path.join(mountpoint, NAME.decode())
        first, second = read_mb_s(served), read_mb_s(served)
        return first, second, same(served, path)
    finally:
        subprocess.run(["umount", mountpoint], check=False)
        server.wait(timeout=10)


def main() -> int:
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:5])
        return 0
    workdir = sys.argv[1]
    size = int(sys.argv[2]) << 20 if len(sys.argv) > 2 else 2 << 30
    path = f"/dev/shm/eddy-passthrough-{os.getpid()}"
    try:
        with open(path, "wb") as f:
            for _ in range(size // (64 << 20)):
                f.write(os.urandom(64 << 20))
        print(f"{size >> 20} MiB on tmpfs, 1 MiB reads, MB/s")
        print(f"{'mode':<12} {'first read':>11} {'second read':>12}  bytes")
        for mode in ("read", "passthrough") * 2:
            first, second, ok = measure(workdir, path, mode)
            print(f"{mode:<12} {first:11.0f} {second:12.0f}  {'same' if ok else 'DIFFER'}")
        print(f"{'tmpfs':<12} {read_mb_s(path):11.0f}")
    finally:
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
