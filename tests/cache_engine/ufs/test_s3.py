"""The S3 source against a real SeaweedFS S3 gateway with signed requests."""

from __future__ import annotations

import os
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cache_engine.spec import parse_parameters
from cache_engine.ufs import Kind, UfsUnavailable, VersionChanged, open_ufs
from cache_engine.ufs.s3 import S3Ufs

pytestmark = pytest.mark.s3

BIG = random.Random(7).randbytes(5 << 20)
FILES = {
    "a.txt": b"hello world\n",
    "empty.bin": b"",
    "big.bin": BIG,
    "sub/inner.txt": b"inner",
    "sub/deeper/leaf.txt": b"leaf",
}


def make_ufs(server, bucket, prefix="", secrets=None, **kwargs) -> S3Ufs:
    source = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    spec = parse_parameters({"source": source, "endpoint": server.endpoint})
    return S3Ufs(spec, server.secrets if secrets is None else secrets, **kwargs)


@pytest.fixture(scope="module")
def dataset(s3_server, tmp_path_factory):
    """A bucket holding FILES under ds/v1, plus keys beside the prefix that must stay hidden."""
    local = tmp_path_factory.mktemp("tree")
    for rel, data in FILES.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
    bucket = "eddy-dataset"
    s3_server.create_bucket(bucket)
    assert s3_server.upload_dir(bucket, "ds/v1", local) == len(FILES)
    s3_server.put(bucket, "ds/v1x/sibling.txt", b"a string-prefix sibling, not a child")
    s3_server.put(bucket, "top.txt", b"outside the prefix")
    ufs = make_ufs(s3_server, bucket, "ds/v1")
    yield ufs
    ufs.close()


def test_stat_root_files_and_implied_dirs(dataset):
    assert dataset.stat("").kind is Kind.DIR
    e = dataset.stat("big.bin")
    assert (e.kind, e.size, e.name) == (Kind.FILE, len(BIG), "big.bin")
    assert e.version and '"' not in e.version
    assert abs(e.mtime_ns / 1e9 - time.time()) < 3600
    assert dataset.stat("empty.bin").size == 0
    assert dataset.stat("empty.bin").kind is Kind.FILE
    assert dataset.stat("sub").kind is Kind.DIR  # no object "sub": implied by its keys
    assert dataset.stat("sub/deeper/").kind is Kind.DIR
    assert dataset.stat("/sub/deeper/leaf.txt").path == "sub/deeper/leaf.txt"


def test_missing_paths(dataset):
    for path in ("nope", "sub/nope", "su", "sub/deep"):
        with pytest.raises(FileNotFoundError):
            dataset.stat(path)
    with pytest.raises(FileNotFoundError):
        dataset.list("nope")
    with pytest.raises(FileNotFoundError):
        dataset.read("nope", 0, 10)
    with pytest.raises(NotADirectoryError):
        dataset.list("a.txt")


def test_list_dirs_and_files_sorted(dataset):
    root = dataset.list("")
    assert [(e.name, e.kind) for e in root] == [
        ("a.txt", Kind.FILE), ("big.bin", Kind.FILE), ("empty.bin", Kind.FILE),
        ("sub", Kind.DIR),
    ]
    assert {e.name: e.size for e in root if e.kind is Kind.FILE} == {
        "a.txt": 12, "big.bin": len(BIG), "empty.bin": 0,
    }
    # list and stat agree on what a file is
    assert {e.path: e for e in root}["big.bin"] == dataset.stat("big.bin")
    assert [e.path for e in dataset.list("sub")] == ["sub/deeper", "sub/inner.txt"]
    assert [e.path for e in dataset.list("sub/deeper")] == ["sub/deeper/leaf.txt"]


def test_prefix_is_the_root(dataset):
    assert dataset.description.startswith("s3://eddy-dataset/ds/v1")
    with pytest.raises(FileNotFoundError):
        dataset.stat("top.txt")
    for path in ("..", "../v1x/sibling.txt", "sub/../../v1x", "../../top.txt"):
        with pytest.raises(PermissionError):
            dataset.stat(path)
        with pytest.raises(PermissionError):
            dataset.read(path, 0, 10)
        with pytest.raises(PermissionError):
            dataset.list(path)


def test_whole_bucket_as_root(s3_server, dataset):
    ufs = make_ufs(s3_server, "eddy-dataset")
    assert [(e.name, e.kind) for e in ufs.list("")] == [("ds", Kind.DIR), ("top.txt", Kind.FILE)]
    assert [e.name for e in ufs.list("ds")] == ["v1", "v1x"]
    assert ufs.read("ds/v1/a.txt", 0, 5) == b"hello"


@pytest.mark.parametrize("offset,length", [
    (0, 1), (0, 4096), (1 << 20, 4096), (123_457, 1_000_003), (0, len(BIG)),
    (len(BIG) - 10, 10), (len(BIG) - 10, 4096),  # short only at the end
    (len(BIG), 10), (len(BIG) + 4096, 10), (5, 0),  # at or after the end: nothing
])
def test_read_ranges_equal_the_source(dataset, offset, length):
    assert dataset.read("big.bin", offset, length) == BIG[offset:offset + length]


def test_read_small_and_empty_files(dataset):
    assert dataset.read("a.txt", 0, 100) == FILES["a.txt"]
    assert dataset.read("a.txt", 6, 5) == b"world"
    assert dataset.read("empty.bin", 0, 100) == b""
    v = dataset.stat("empty.bin").version
    assert dataset.read("empty.bin", 0, 100, version=v) == b""
    with pytest.raises(IsADirectoryError):
        dataset.read("", 0, 1)


def test_read_with_current_version(dataset):
    e = dataset.stat("big.bin")
    assert dataset.read("big.bin", 4096, 8192, version=e.version) == BIG[4096:4096 + 8192]
    assert dataset.read("big.bin", len(BIG), 1, version=e.version) == b""


def test_concurrent_reads_from_many_threads(dataset):
    version = dataset.stat("big.bin").version
    ranges = [(i * 300_001, 262_144) for i in range(17)]

    def read(r):
        return dataset.read("big.bin", r[0], r[1], version=version)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(read, ranges * 3))
    assert results == [BIG[o:o + n] for o, n in ranges * 3]


def test_changed_object_raises_version_changed(s3_server, s3_bucket):
    s3_server.put(s3_bucket, "f.bin", b"first version, long enough")
    ufs = make_ufs(s3_server, s3_bucket)
    old = ufs.stat("f.bin").version
    assert ufs.read("f.bin", 0, 5, version=old) == b"first"
    s3_server.put(s3_bucket, "f.bin", b"second")
    new = ufs.stat("f.bin")
    assert new.version != old and new.size == 6
    with pytest.raises(VersionChanged):
        ufs.read("f.bin", 0, 5, version=old)
    with pytest.raises(VersionChanged):
        ufs.read("f.bin", 20, 5, version=old)  # past the new end, inside the old one
    assert ufs.read("f.bin", 0, 100, version=new.version) == b"second"
    assert ufs.read("f.bin", 0, 100) == b"second"


def test_directory_markers(s3_server, s3_bucket):
    s3_server.put(s3_bucket, "d/", b"")  # what consoles create for "new folder"
    s3_server.put(s3_bucket, "d/f.txt", b"x")
    s3_server.put(s3_bucket, "d/sub/", b"")
    s3_server.put(s3_bucket, "d/sub/g.txt", b"y")
    ufs = make_ufs(s3_server, s3_bucket)
    assert [(e.name, e.kind) for e in ufs.list("")] == [("d", Kind.DIR)]
    assert [(e.name, e.kind) for e in ufs.list("d")] == [("f.txt", Kind.FILE), ("sub", Kind.DIR)]
    assert ufs.stat("d").kind is Kind.DIR
    assert ufs.stat("d/sub").kind is Kind.DIR


def test_listing_paginates(s3_server, s3_bucket):
    n = 1105  # S3 pages hold 1000 keys
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3_server.put(s3_bucket, f"many/k{i:05d}", b"z"), range(n)))
    ufs = make_ufs(s3_server, s3_bucket)
    names = [e.name for e in ufs.list("many")]
    assert names == [f"k{i:05d}" for i in range(n)]


def test_wrong_secret_is_permission_error_without_the_secret(s3_server, dataset):
    secret = "WrongSecret-0123456789abcdef"
    ufs = make_ufs(s3_server, "eddy-dataset", "ds/v1",
                   secrets={"accessKeyId": s3_server.access_key, "secretAccessKey": secret})
    for call in (lambda: ufs.stat("a.txt"), lambda: ufs.list(""), lambda: ufs.list("sub"),
                 lambda: ufs.read("a.txt", 0, 5)):
        with pytest.raises(PermissionError) as info:
            call()
        text = str(info.value)
        assert "eddy-dataset" in text and "denied" in text
        assert secret not in text and s3_server.secret_key not in text
        assert secret not in repr(info.value)
    assert secret not in ufs.description


def test_anonymous_access_is_denied_clearly(s3_server, dataset):
    ufs = make_ufs(s3_server, "eddy-dataset", "ds/v1", secrets={})
    with pytest.raises(PermissionError, match="anonymous"):
        ufs.read("a.txt", 0, 5)
    with pytest.raises(PermissionError, match="eddy-dataset"):
        ufs.list("")


def test_credentials_come_only_from_the_secret(s3_server, dataset, monkeypatch):
    """The node's AWS_* environment neither breaks nor lends credentials to a volume."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "bogus-token")
    monkeypatch.setenv("AWS_ENDPOINT", "http://127.0.0.1:9")
    ufs = make_ufs(s3_server, "eddy-dataset", "ds/v1")
    assert ufs.read("a.txt", 0, 5) == b"hello"
    anonymous = make_ufs(s3_server, "eddy-dataset", "ds/v1", secrets={})
    with pytest.raises(PermissionError):
        anonymous.read("a.txt", 0, 5)


def test_missing_bucket_is_unavailable(s3_server):
    ufs = make_ufs(s3_server, "no-such-bucket-here")
    with pytest.raises(UfsUnavailable, match="no-such-bucket-here"):
        ufs.list("")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_endpoint_is_unavailable_quickly():
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    spec = parse_parameters({"source": "s3://bkt/p", "endpoint": endpoint})
    ufs = S3Ufs(spec, {"accessKeyId": "AK", "secretAccessKey": "SecretNotToShow"},
                client_options={"connect_timeout": "1s"})
    for call in (lambda: ufs.stat("x"), lambda: ufs.list(""), lambda: ufs.read("x", 0, 1)):
        start = time.monotonic()
        with pytest.raises(UfsUnavailable) as info:
            call()
        assert time.monotonic() - start < 10  # default retries back off for about a second
        assert endpoint in str(info.value) and "connect" in str(info.value)
        assert "SecretNotToShow" not in str(info.value)


def test_silent_endpoint_times_out_as_unavailable():
    """A server that accepts connections but never answers (a hung gateway)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        spec = parse_parameters({"source": "s3://bkt", "endpoint": endpoint})
        ufs = S3Ufs(spec, {}, client_options={"timeout": "1s"}, retry_config={"max_retries": 1})
        start = time.monotonic()
        with pytest.raises(UfsUnavailable, match="timed out"):
            ufs.read("x", 0, 1)
        assert time.monotonic() - start < 10
    finally:
        listener.close()


def test_open_ufs_builds_an_s3_backend(s3_server, dataset):
    spec = parse_parameters({"source": "s3://eddy-dataset/ds/v1", "endpoint": s3_server.endpoint,
                             "region": "eu-west-1"})
    ufs = open_ufs(spec, s3_server.secrets)
    assert isinstance(ufs, S3Ufs)
    assert ufs.read("sub/inner.txt", 0, 100) == b"inner"
    assert s3_server.endpoint in ufs.description


def test_aws_default_endpoint_styles():
    """No endpoint: virtual-hosted AWS, path style for dotted buckets; no network needed."""
    plain = S3Ufs(parse_parameters({"source": "s3://my-bucket/x"}), {})
    assert plain.endpoint == "https://my-bucket.s3.us-east-1.amazonaws.com"
    assert plain.description == "s3://my-bucket/x"
    dotted = S3Ufs(parse_parameters({"source": "s3://my.bucket", "region": "eu-west-1"}), {})
    assert dotted.endpoint == "https://s3.eu-west-1.amazonaws.com"


def test_no_secret_in_object_state(s3_server):
    ufs = make_ufs(s3_server, "any-bucket")
    assert s3_server.secret_key not in repr(ufs) + ufs.description + repr(vars(ufs).keys())
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") != s3_server.secret_key
