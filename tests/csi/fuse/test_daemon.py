"""The mount daemon as the node plugin runs it: a real process, a real FUSE mount.

Each test starts `python -m csi.fuse` with the parameters on stdin, waits for its one answer
line (READY or ERROR), and checks through the kernel what a pod would see. Every mount is
removed in teardown (`fusermount3 -uz`), whatever the test did.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import queue
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from csi.mounts import is_mount_point
from tests.support.fuse import fuse_problem, run_as
from tests.support.http_source import HttpSource
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[3]
READY_TIMEOUT = 30.0
BIG = 8 << 20
MANY = 2000
STARTUP_EXIT = 2


pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(fuse_problem() is not None, reason=str(fuse_problem())),
]


class Daemon:
    """One `python -m csi.fuse` process and the line it answered."""

    def __init__(self, mountpoint: Path, parameters: dict, secrets: dict | None = None,
                 volume_id: str = "vol-test", log_dir: Path | None = None):
        self.mountpoint = mountpoint
        self.log_path = (log_dir or mountpoint.parent) / f"{mountpoint.name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "csi.fuse", "--mountpoint", str(mountpoint),
             "--volume-id", volume_id, "--log-level", "debug"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=REPO,
        )
        self.proc.stdin.write(json.dumps({"parameters": parameters,
                                          "secrets": secrets or {}}).encode())
        self.proc.stdin.close()
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()),
                         daemon=True).start()
        try:
            self.answer = lines.get(timeout=READY_TIMEOUT).decode()
        except queue.Empty:
            self.answer = ""

    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if is_mount_point(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], check=False)
        self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def start(tmp_path):
    daemons: list[Daemon] = []

    def _start(root: Path, **params) -> Daemon:
        mnt = tmp_path / f"mnt{len(daemons)}"
        mnt.mkdir()
        secrets = params.pop("secrets", None)
        params.setdefault("source", f"local://{root}")
        d = Daemon(mnt, params, secrets)
        daemons.append(d)
        return d

    yield _start
    for d in daemons:
        d.stop()


def make_tree(root: Path) -> dict[str, bytes]:
    """Nested dirs, an 8 MiB random file, an empty file, a 2k-file directory, two links."""
    rng = random.Random(7)
    files = {
        "big.bin": rng.randbytes(BIG),
        "empty": b"",
        "a/b/c/deep.txt": b"deep\n",
        "a/notes.md": b"# notes\n" * 100,
    }
    files.update({f"many/f{i:04d}": b"x" * (i % 7) for i in range(MANY)})
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "a" / "link-inside").symlink_to("notes.md")
    (root / "escape").symlink_to("/etc/passwd")
    return files


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    return root, make_tree(root)


@pytest.fixture(scope="module")
def mount(tree, tmp_path_factory):
    """One mount shared by the read-only checks (a 2k-entry tree takes a moment to build)."""
    root, files = tree
    mnt = tmp_path_factory.mktemp("mnt")
    d = Daemon(mnt, {"source": f"local://{root}"}, log_dir=tmp_path_factory.mktemp("log"))
    try:
        assert d.answer == "READY\n", d.log()
        yield mnt, root, files
    finally:
        d.stop()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_ready_then_the_whole_tree_is_visible(mount):
    mnt, root, files = mount
    assert sorted(os.listdir(mnt)) == ["a", "big.bin", "empty", "many"]  # no "escape"
    seen = set()
    for dirpath, dirnames, filenames in os.walk(mnt):
        rel = os.path.relpath(dirpath, mnt)
        seen.update(os.path.normpath(os.path.join(rel, n)) for n in dirnames + filenames)
    expected = {os.path.normpath(p) for p in files} | {"a", "a/b", "a/b/c", "many",
                                                       "a/link-inside"}
    assert seen == expected


def test_bytes_and_sizes_match_the_source(mount):
    mnt, _, files = mount
    for rel, data in files.items():
        path = mnt / rel
        assert os.stat(path).st_size == len(data), rel
        assert sha(path.read_bytes()) == sha(data), rel


def test_random_preads(mount):
    mnt, _, files = mount
    data = files["big.bin"]
    rng = random.Random(1)
    fd = os.open(mnt / "big.bin", os.O_RDONLY)
    try:
        for _ in range(200):
            off = rng.randrange(0, BIG + 100)
            size = rng.choice([1, 17, 4096, 65536, 1 << 20, 3 << 20])
            assert os.pread(fd, size, off) == data[off:off + size], (off, size)
    finally:
        os.close(fd)


def test_a_large_directory_lists_with_attributes(mount):
    mnt, _, files = mount
    with os.scandir(mnt / "many") as it:
        sizes = {e.name: e.stat(follow_symlinks=False).st_size for e in it}
    assert len(sizes) == MANY
    assert all(sizes[f"f{i:04d}"] == i % 7 for i in range(MANY))


def test_symlinks_inside_are_links_and_links_outside_are_hidden(mount):
    mnt, _, files = mount
    link = mnt / "a" / "link-inside"
    assert os.readlink(link) == "notes.md"
    assert os.lstat(link).st_mode & 0o170000 == 0o120000
    assert link.read_bytes() == files["a/notes.md"]
    assert not os.path.lexists(mnt / "escape")


def test_modes_and_owners_are_the_source_s(mount):
    mnt, root, _ = mount
    for rel in ("big.bin", "a", "a/notes.md", "many/f0001"):
        shown, source = os.stat(mnt / rel), os.stat(root / rel)
        assert (shown.st_mode, shown.st_uid, shown.st_gid) == \
            (source.st_mode, source.st_uid, source.st_gid), rel
    assert os.stat(mnt / "big.bin").st_blksize == 1 << 20


NOBODY = 65534


def permission_tree(root: Path) -> None:
    """A dataset a hostPath or NFS claim could hold: root's private and public files, a
    private directory, a user's file and a setuid one."""
    root.chmod(0o755)  # mktemp makes it 0700: the mount's root would be closed to all
    (root / "private").write_bytes(b"root only\n")
    (root / "private").chmod(0o600)
    (root / "public").write_bytes(b"for everyone\n")
    (root / "public").chmod(0o644)
    (root / "closed").mkdir(mode=0o700)
    (root / "closed" / "inside").write_bytes(b"x")
    (root / "closed" / "inside").chmod(0o644)
    (root / "users").write_bytes(b"user 1000 and group 2000\n")
    os.chown(root / "users", 1000, 2000)
    (root / "users").chmod(0o640)
    (root / "setuid").write_bytes(b"#!/bin/sh\n")
    (root / "setuid").chmod(0o4755)


def test_the_kernel_enforces_the_source_modes(start, tmp_path):
    src = tmp_path / "perm-src"
    src.mkdir()
    permission_tree(src)
    d = start(src, metadataTTL="immutable")
    assert d.answer == "READY\n", d.log()
    mnt = d.mountpoint
    denied = run_as(NOBODY, NOBODY, ["cat", "private"], cwd=mnt)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert run_as(NOBODY, NOBODY, ["cat", "public"], cwd=mnt).stdout == "for everyone\n"
    assert "Permission denied" in run_as(NOBODY, NOBODY, ["ls", "closed"], cwd=mnt).stderr
    assert "Permission denied" in run_as(
        NOBODY, NOBODY, ["cat", "closed/inside"], cwd=mnt).stderr
    # The file's owner reads it, and so does its group; others do not.
    assert run_as(1000, 1000, ["cat", "users"], cwd=mnt).returncode == 0
    assert run_as(3000, 3000, ["cat", "users"], cwd=mnt, groups=(2000,)).returncode == 0
    assert run_as(3000, 3000, ["cat", "users"], cwd=mnt).returncode != 0
    assert (mnt / "private").read_bytes() == b"root only\n"  # root reads all, as at the source
    shown = os.stat(mnt / "users")
    assert (shown.st_mode, shown.st_uid, shown.st_gid) == (stat.S_IFREG | 0o640, 1000, 2000)
    assert stat.S_IMODE(os.stat(mnt / "setuid").st_mode) == 0o755  # setuid never shown
    # Write bits are shown as the source has them; writing is still refused.
    assert os.stat(mnt / "private").st_mode & 0o200
    with pytest.raises(OSError) as info:
        os.open(mnt / "private", os.O_WRONLY)
    assert info.value.errno == errno.EROFS


def test_volume_parameters_override_the_source_modes(start, tmp_path):
    src = tmp_path / "perm-src"
    src.mkdir()
    permission_tree(src)
    d = start(src, uid="1000", gid="2000", fileMode="0640", dirMode="0750")
    assert d.answer == "READY\n", d.log()
    mnt = d.mountpoint
    for rel in ("private", "public", "setuid"):
        shown = os.stat(mnt / rel)
        assert (shown.st_mode, shown.st_uid, shown.st_gid) == (stat.S_IFREG | 0o640, 1000, 2000)
    assert stat.S_IMODE(os.stat(mnt / "closed").st_mode) == 0o750
    assert run_as(1000, 1000, ["cat", "private"], cwd=mnt).stdout == "root only\n"
    assert "Permission denied" in run_as(NOBODY, NOBODY, ["cat", "public"], cwd=mnt).stderr


def test_an_object_store_shows_the_volume_s_owner_and_modes(start, tmp_path):
    src = tmp_path / "site"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "file.txt").write_bytes(b"from http\n")
    (src / "dir" / "file.txt").chmod(0o600)  # an HTTP server shows no modes: this never shows
    with HttpSource(src) as http:
        plain = start(src, source=http.url)
        owned = start(src, source=http.url, uid="1000", gid="2000", fileMode="0440",
                      dirMode="0550")
        assert plain.answer == owned.answer == "READY\n", plain.log() + owned.log()
        f, d = os.stat(plain.mountpoint / "dir/file.txt"), os.stat(plain.mountpoint / "dir")
        assert (f.st_mode, f.st_uid, f.st_gid) == (stat.S_IFREG | 0o444, 0, 0)
        assert (d.st_mode, d.st_uid, d.st_gid) == (stat.S_IFDIR | 0o555, 0, 0)
        assert run_as(NOBODY, NOBODY, ["cat", "dir/file.txt"],
                      cwd=plain.mountpoint).stdout == "from http\n"
        f, d = os.stat(owned.mountpoint / "dir/file.txt"), os.stat(owned.mountpoint / "dir")
        assert (f.st_mode, f.st_uid, f.st_gid) == (stat.S_IFREG | 0o440, 1000, 2000)
        assert (d.st_mode, d.st_uid, d.st_gid) == (stat.S_IFDIR | 0o550, 1000, 2000)
        assert run_as(1000, 1000, ["cat", "dir/file.txt"],
                      cwd=owned.mountpoint).stdout == "from http\n"
        with os.scandir(owned.mountpoint) as listing:  # readdirplus carries them too
            assert [(e.name, e.stat().st_mode, e.stat().st_uid) for e in listing] == \
                [("dir", stat.S_IFDIR | 0o550, 1000)]
        assert "Permission denied" in run_as(NOBODY, NOBODY, ["cat", "dir/file.txt"],
                                             cwd=owned.mountpoint).stderr


def test_inode_numbers_stay_while_held_and_are_never_reused(mount):
    """A number stays while the kernel holds its inode (here: open). One the kernel forgot may
    come back as a new number, never as a number another file had."""
    mnt, _, _ = mount
    held = [mnt / "big.bin", mnt / "a" / "b" / "c" / "deep.txt"]
    loose = [mnt / "many" / f"f{i:04d}" for i in range(40, 50)]
    fds = [os.open(p, os.O_RDONLY) for p in held]
    try:
        before = {p: os.stat(p).st_ino for p in held + loose}
        assert before == {p: os.stat(p).st_ino for p in held + loose}
        assert len(set(before.values())) == len(before)
        # Make the kernel forget what it can: the next stat of those is a fresh lookup.
        with contextlib.suppress(OSError):
            Path("/proc/sys/vm/drop_caches").write_text("2\n")
        after = {p: os.stat(p).st_ino for p in held + loose}
    finally:
        for fd in fds:
            os.close(fd)
    assert [after[p] for p in held] == [before[p] for p in held]
    assert len(set(after.values())) == len(after)
    for p in loose:
        assert after[p] == before[p] or after[p] not in before.values(), p


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.access("/proc/sys/vm/drop_caches", os.W_OK),
                    reason="cannot make the kernel forget inodes (drop_caches not writable)")
def test_a_walk_the_kernel_forgot_leaves_no_node_ids_in_the_daemon(tmp_path, start):
    """A pod that stats 20,000 files: the daemon keeps a node id for each while the kernel
    holds it and drops it when the kernel sends FORGET, so its memory follows the kernel's
    cache, not the number of files ever seen. statfs's f_files is the daemon's count."""
    src = tmp_path / "src"
    dirs, per_dir = 4, 5000
    for d in range(dirs):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(per_dir):
            (src / f"d{d}" / f"f{i:05d}").write_bytes(b"x")
    daemon = start(src)
    assert daemon.answer == "READY\n", daemon.log()
    mnt = daemon.mountpoint
    started = (os.statvfs(mnt).f_files, vm_rss_kib(daemon.proc.pid))
    assert len(os.listdir(mnt / "d0")) == per_dir  # readdirplus, in many replies
    for d in range(dirs):
        for i in range(per_dir):
            assert os.stat(mnt / f"d{d}" / f"f{i:05d}").st_size == 1
    walked = (os.statvfs(mnt).f_files, vm_rss_kib(daemon.proc.pid))
    assert walked[0] > dirs * per_dir // 2  # (another test's drop_caches may have come)

    def forgotten() -> int | None:
        Path("/proc/sys/vm/drop_caches").write_text("2\n")  # dentries and inodes: FORGETs
        known = os.statvfs(mnt).f_files
        return known if known <= 16 else None

    forgot = (wait_for(forgotten, 60, "the daemon to drop the node ids the kernel forgot",
                       interval=0.5), vm_rss_kib(daemon.proc.pid))
    print(f"\nknown inodes / daemon VmRSS KiB: mounted {started}, after stat of "
          f"{dirs * per_dir} files {walked}, after the kernel forgot them {forgot}")
    assert os.stat(mnt / "d3" / "f04999").st_size == 1  # looked up anew


def test_writes_are_refused(mount):
    mnt, _, _ = mount
    attempts = [("big.bin", os.O_WRONLY), ("big.bin", os.O_RDWR), ("empty", os.O_RDWR),
                ("new-file", os.O_WRONLY | os.O_CREAT)]
    for name, flags in attempts:
        with pytest.raises(OSError) as info:
            os.open(mnt / name, flags, 0o644)
        assert info.value.errno in (errno.EROFS, errno.EACCES), (name, flags)
    with pytest.raises(OSError):
        os.mkdir(mnt / "newdir")


@pytest.mark.parametrize(("params", "words"), [
    ({"source": "local:///does/not/exist"}, "/does/not/exist"),
    ({"bogusKey": "1"}, "bogusKey"),
    ({"metadataTTL": "soon"}, "metadataTTL"),
    ({"secrets": {"accessKeyId": "AKIDNOTLOGGED"}}, "secretAccessKey"),
])
def test_bad_input_answers_error_and_mounts_nothing(tree, start, params, words):
    root, _ = tree
    d = start(root, **params)
    assert d.answer.startswith("ERROR ") and d.answer.endswith("\n")
    assert words in d.answer
    assert d.wait() == 2
    assert not is_mount_point(d.mountpoint)
    assert d.proc.stdout.read() == b""  # exactly one line
    assert "AKIDNOTLOGGED" not in d.answer + d.log()


def test_a_mountpoint_that_is_not_a_directory(tree, tmp_path):
    root, _ = tree
    d = Daemon(tmp_path / "missing", {"source": f"local://{root}"}, log_dir=tmp_path)
    try:
        assert d.answer.startswith("ERROR ") and "missing" in d.answer
        assert d.wait() == 2
    finally:
        d.stop()


def test_sigterm_unmounts_and_exits_0(tree, start):
    root, _ = tree
    d = start(root)
    assert d.answer == "READY\n", d.log()
    assert is_mount_point(d.mountpoint)
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0
    assert not is_mount_point(d.mountpoint)


def test_sigint_while_a_file_is_open(tree, start):
    root, files = tree
    d = start(root)
    assert d.answer == "READY\n", d.log()
    fd = os.open(d.mountpoint / "big.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 0) == files["big.bin"][:10]
        d.proc.send_signal(signal.SIGINT)
        assert d.wait() == 0
        assert not is_mount_point(d.mountpoint)  # detached: the open file does not keep it
        with pytest.raises(OSError) as info:
            os.pread(fd, 10, BIG - 10)
        assert info.value.errno == errno.ENOTCONN
    finally:
        try:
            os.close(fd)
        except OSError as e:
            assert e.errno == errno.ENOTCONN


def test_external_unmount_ends_the_daemon(tree, start):
    root, _ = tree
    d = start(root)
    assert d.answer == "READY\n", d.log()
    subprocess.run(["fusermount3", "-u", str(d.mountpoint)], check=True)
    assert d.wait() == 0
    assert not is_mount_point(d.mountpoint)


def test_a_changed_file_shows_whole_after_the_ttl(tmp_path, start):
    src = tmp_path / "src"
    src.mkdir()
    old, new = b"old!" * 1000, os.urandom(123_457)
    same_old, same_new = b"a" * 300_000, b"b" * 300_000  # same size: only the pages differ
    (src / "data.bin").write_bytes(old)
    (src / "same.bin").write_bytes(same_old)
    d = start(src, metadataTTL="1")
    assert d.answer == "READY\n", d.log()
    path, same = d.mountpoint / "data.bin", d.mountpoint / "same.bin"
    assert path.read_bytes() == old
    assert path.read_bytes() == old  # second open: same version, page cache kept
    assert same.read_bytes() == same_old
    (src / "data.bin").write_bytes(new)
    (src / "same.bin").write_bytes(same_new)
    wait_for(lambda: os.stat(path).st_size == len(new), 10, "the new size after the TTL")
    assert sha(path.read_bytes()) == sha(new)
    assert sha(same.read_bytes()) == sha(same_new)


def test_immutable_datasets_keep_what_they_saw(tmp_path, start):
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(b"12345")
    d = start(src, metadataTTL="immutable")
    assert d.answer == "READY\n", d.log()
    assert os.stat(d.mountpoint / "data.bin").st_size == 5
    assert not os.path.exists(d.mountpoint / "late.bin")
    (src / "late.bin").write_bytes(b"x")
    (src / "data.bin").write_bytes(b"1234567")
    assert os.stat(d.mountpoint / "data.bin").st_size == 5
    assert not os.path.exists(d.mountpoint / "late.bin")  # the absence is cached too


def test_extended_attributes_are_not_supported(mount):
    mnt, _, _ = mount
    for _ in range(2):  # the second answer comes from the kernel, which remembered
        with pytest.raises(OSError) as info:
            os.getxattr(mnt / "big.bin", "user.anything")
        assert info.value.errno == errno.EOPNOTSUPP
        with pytest.raises(OSError) as info:
            os.listxattr(mnt / "big.bin")
        assert info.value.errno == errno.EOPNOTSUPP


@pytest.mark.parametrize("delay", [0.0, 0.1, 0.2, 0.3, 0.5])
def test_sigterm_at_any_moment_of_startup_leaves_no_mount(tree, tmp_path, delay):
    root, _ = tree
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "csi.fuse", "--mountpoint", str(mnt), "--volume-id", "v"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        proc.stdin.write(json.dumps({"parameters": {"source": f"local://{root}"}}).encode())
        proc.stdin.close()
        time.sleep(delay)
        proc.terminate()
        assert proc.wait(timeout=15) in (0, STARTUP_EXIT, -signal.SIGTERM)
        answer = proc.stdout.read().decode()
        assert answer in ("", "READY\n") or answer.startswith("ERROR ")
        assert not is_mount_point(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        if is_mount_point(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
