"""The engine's API over a real unix socket, as a mount daemon of the node plugin uses it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import grpc
import pytest

from cache_engine.client import EngineClient, translate
from cache_engine.host import engine_server, start_private
from cache_engine.reader import DatasetReader
from cache_engine.service import CacheEngineService
from cache_engine.ufs.base import UfsUnavailable
from cache_engine.ufs.local import LocalUfs
from cache_engine.wire import DatasetNotOpen, EngineUnreachable
from eddy.base.pb import cache_pb2, cache_pb2_grpc
from eddy.base.rpc import ERRNO_KEY, ERROR_KEY
from tests.support.engine import FakeClock, blob, make_spec, make_tiers
from tests.support.fake_source import FakeUfs
from tests.support.model_files import safetensors_file
from tests.support.wait import wait_for


@pytest.fixture
def serve(engines, tmp_path):
    """serve(**engine_options) -> (engine, client): an engine served on a socket in tmp_path,
    and a client of it."""
    stops = []

    def start(**options):
        engine = engines(**options)
        server = engine_server(4)
        cache_pb2_grpc.add_CacheEngineServicer_to_server(CacheEngineService(engine), server)
        start_private(server, str(tmp_path / "engine.sock"))
        client = EngineClient(f"unix://{tmp_path / 'engine.sock'}")
        stops.append((client, server))
        return engine, client

    yield start
    for client, server in stops:
        client.close()
        server.stop(None).wait()


@pytest.fixture
def served(serve):
    return serve()


def test_a_reader_over_the_socket_gets_the_source_bytes(served, source):
    engine, client = served
    for _pass in range(2):  # cold, then from the tiers (a fresh reader holds no block)
        reader = DatasetReader(client, make_spec(), {})
        try:
            for path in ("data/a.bin", "data/b.bin", "small.txt"):
                entry = reader.stat(path)
                assert bytes(reader.read(path, 0, entry.size, entry.version)) == \
                    source.data(path)
        finally:
            reader.close()
    stats = engine.statistics()
    assert stats.hits >= 10 and stats.source_bytes == sum(
        len(source.data(p)) for p in ("data/a.bin", "data/b.bin", "small.txt"))


def test_a_local_source_modes_and_owners_reach_the_mount_over_the_socket(serve, tmp_path):
    root = tmp_path / "src"
    (root / "d").mkdir(parents=True)
    (root / "d" / "secret").write_bytes(b"x")
    os.chown(root / "d" / "secret", 1234, 5678)
    os.chmod(root / "d" / "secret", 0o600)
    os.chmod(root / "d", 0o750)
    _, client = serve(ufs=LocalUfs(str(root)))
    ds = client.open_dataset(make_spec(f"local://{root}", uid="7"), {}).dataset_id
    secret = client.stat(ds, "d/secret")
    assert (secret.mode, secret.uid, secret.gid) == (0o600, 1234, 5678)
    [listed] = client.list(ds, "d")
    assert listed == secret
    assert client.stat(ds, "d").mode == 0o750


def test_a_volume_opening_over_the_socket_is_named_in_the_status(served):
    """The daemon's volume id reaches the engine: its settings count for that volume only."""
    engine, client = served
    ds = client.open_dataset(make_spec(), {}, "pvc-1").dataset_id
    assert engine.dataset_status(ds).volumes == ("pvc-1",)


def test_the_status_over_the_socket_names_the_tiers_fastest_first(serve, tmp_path):
    """The tier maps of a StatusResponse have no order; `tiers` gives the node's."""
    _, client = serve(tiers=make_tiers(str(tmp_path), 4, 8, 16))
    status = cache_pb2_grpc.CacheEngineStub(client.channel).Status(cache_pb2.StatusRequest())
    assert list(status.tiers) == ["MEM", "SSD", "HDD"]
    assert set(status.tier_size) == set(status.tiers)


def test_locate_over_the_socket_carries_the_following_blocks(served):
    engine, client = served
    ds = client.open_dataset(make_spec(), {}).dataset_id
    entry = client.stat(ds, "data/b.bin")  # 3 blocks
    for index in range(3):
        engine.locate(ds, entry.path, entry.version, index, entry.size)
    run = client.locate(ds, entry.path, entry.version, 0, entry.size, 2)
    here = engine.locate(ds, entry.path, entry.version, 0, entry.size, 2)
    assert (run.file, run.checksum) == (here.file, here.checksum)
    assert [(f.file, f.length, f.checksum) for f in run.following] == \
        [(f.file, f.length, f.checksum) for f in here.following]
    assert len(run.following) == 2


def test_locate_over_the_socket_carries_the_next_files_of_a_scan(serve):
    src = FakeUfs({f"tok/{i}.json": blob(200 + i, seed=i) for i in range(6)})
    engine, client = serve(ufs=src)
    ds = client.open_dataset(make_spec(readAhead="8"), {}).dataset_id
    files = client.list(ds, "tok")
    for entry in files[:2]:  # a scan starts: the next files are fetched ahead
        client.locate(ds, entry.path, entry.version, 0, entry.size)
    engine.drain()
    third = files[2]
    loc = client.locate(ds, third.path, third.version, 0, third.size, 0, 2)
    assert [(path, version) for path, version, _ in loc.next_files] == \
        [(e.path, e.version) for e in files[3:5]]
    for (_path, _version, first), entry in zip(loc.next_files, files[3:5], strict=True):
        here = engine.locate(ds, entry.path, entry.version, 0, entry.size)
        assert (first.file, first.length, first.checksum) == \
            (here.file, here.length, here.checksum)


def test_a_volumes_prefetch_reaches_the_engine_and_an_open_over_the_socket_starts_it(serve):
    src = FakeUfs({"m/model.safetensors": safetensors_file({"w0": 3 << 16, "w1": 2 << 16})})
    engine, client = serve(ufs=src)
    ds = client.open_dataset(make_spec(prefetch="safetensors"), {}).dataset_id
    entry = client.stat(ds, "m/model.safetensors")
    assert client.extent(ds, entry.path, entry.version, entry.size) is None  # a cold open
    engine.drain()
    blocks = -(-entry.size // (64 << 10))
    assert sorted(b.key.index for b in engine.blocks(ds)) == list(range(blocks))


def test_errors_keep_their_meaning_across_the_socket(served, tmp_path):
    _engine, client = served
    with pytest.raises(DatasetNotOpen):
        client.stat("no-such-dataset", "x")
    nobody = EngineClient(f"unix://{tmp_path / 'nobody.sock'}")
    try:
        with pytest.raises(EngineUnreachable):  # nobody listens: mounts fall back to the source
            nobody.stat("any", "x")
    finally:
        nobody.close()


def test_a_call_cut_by_a_stopping_engine_is_unreachable_not_an_error(engines, tmp_path):
    """An engine stopping for an upgrade cancels the calls its grace did not cover: the mount
    must read the source for them (EngineUnreachable), not fail the pod's read with EIO."""
    src = FakeUfs({"slow.bin": blob(100)})
    server = engine_server(4)
    cache_pb2_grpc.add_CacheEngineServicer_to_server(
        CacheEngineService(engines(ufs=src)), server)
    start_private(server, str(tmp_path / "engine.sock"))
    client = EngineClient(f"unix://{tmp_path / 'engine.sock'}")
    try:
        ds = client.open_dataset(make_spec(), {}).dataset_id
        src.hold("slow.bin")
        outcome = []

        def stat() -> None:
            try:
                client.stat(ds, "slow.bin")
                outcome.append(None)
            except Exception as e:  # noqa: BLE001 - the test looks at which one
                outcome.append(e)

        call = threading.Thread(target=stat)
        call.start()
        wait_for(lambda: src.count("stat") >= 1, 10, "the stat to reach the source")
        server.stop(0.3).wait()
        src.release()
        call.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], EngineUnreachable), outcome
    finally:
        src.release()
        client.close()
        server.stop(None).wait()


class _CutCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, metadata=()):
        self._code, self._metadata = code, metadata

    def code(self):
        return self._code

    def details(self):
        return self._code.name

    def trailing_metadata(self):
        return self._metadata


def test_a_call_the_transport_cancelled_is_unreachable_but_an_engine_answer_is_not():
    """A plugin upgrade in CI cut a lookup with CANCELLED (no eddy-error metadata): that is the
    engine going away, so the mount falls back to the source. An answer the engine's own code
    gave keeps its meaning."""
    assert isinstance(translate(_CutCall(grpc.StatusCode.CANCELLED)), EngineUnreachable)
    assert isinstance(translate(_CutCall(grpc.StatusCode.UNAVAILABLE)), EngineUnreachable)
    answered = translate(_CutCall(grpc.StatusCode.UNAVAILABLE,
                                  ((ERROR_KEY, "UfsUnavailable"), (ERRNO_KEY, "110"))))
    assert type(answered) is UfsUnavailable and answered.errno == 110
    assert not isinstance(translate(_CutCall(grpc.StatusCode.INTERNAL)), EngineUnreachable)


def test_a_mount_daemon_loads_no_engine_machinery():
    """A daemon imports the client and the reader only: the engine's index, table, placement
    and preload stay out of its memory and its start-up time."""
    code = ("import cache_engine.client, cache_engine.reader; import sys; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('cache_engine'))))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=root, env=env).stdout.split()
    assert "cache_engine.types" in out
    heavy = {"cache_engine.engine", "cache_engine.index", "cache_engine.placement",
             "cache_engine.preload", "cache_engine.table", "cache_engine.status",
             "cache_engine.recovery", "cache_engine.dataset"}
    assert heavy.isdisjoint(out), sorted(heavy.intersection(out))


def test_metadata_answers_over_the_socket_say_how_long_they_stay_fresh(serve):
    clock = FakeClock()
    _engine, client = serve(clock=clock)
    ds = client.open_dataset(make_spec(metadataTTL="30"), {}).dataset_id
    assert client.stat_fresh(ds, "data/a.bin")[1] == 30
    clock.advance(12)
    assert client.stat_fresh(ds, "data/a.bin")[1] == pytest.approx(18)  # read 12 s ago
    entries, fresh_for = client.list_fresh(ds, "data")
    assert fresh_for == 30 and {e.path for e in entries} == {"data/a.bin", "data/b.bin"}
    assert client.stat_fresh(ds, "data/a.bin")[1] == 30  # the newer listing answers it
    immutable = client.open_dataset(make_spec(metadataTTL="immutable"), {}).dataset_id
    assert client.stat_fresh(immutable, "small.txt")[1] == float("inf")
