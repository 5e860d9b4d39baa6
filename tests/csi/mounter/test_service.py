"""`eddy mounter`'s socket: the node plugin's calls, their errors, and the descriptor copies
each side holds for the other, over a real unix socket with a real FUSE mount (the daemons
are fakes: nothing here reads through the mount)."""

from __future__ import annotations

import os
import socket

import pytest

from csi.fuse import device
from csi.mounter import wire
from csi.mounter.mounter import Mounter
from csi.mounter.service import MounterClient, MounterServer
from csi.mounter.states import Phase
from eddy.base.errors import AlreadyExists, InvalidArgument, Unavailable
from tests.support.driver import cleanup_mounts
from tests.support.fake_daemons import Fakes, config
from tests.support.node import mounts_at
from tests.support.wait import wait_for

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs /dev/fuse and root to mount FUSE")


@pytest.fixture
def fakes():
    f = Fakes()
    yield f
    f.close()


@pytest.fixture
def serve(tmp_path, fakes):
    """Start a mounter (a new one on the same state dir each call) behind the socket."""
    running = []

    def start() -> Mounter:
        for server, mounter in running:
            server.stop()
            mounter.close()
        mounter = Mounter(str(tmp_path / "state"), start_daemon=fakes.start)
        server = MounterServer(mounter, f"unix://{tmp_path}/mounter.sock")
        mounter.start()
        server.start()
        running.append((server, mounter))
        return mounter

    yield start
    for server, mounter in running:
        server.stop()
        mounter.close()
    cleanup_mounts(str(tmp_path))


def copies(client: MounterClient) -> dict[str, int]:
    return {v: fd for v, (_, fd) in client._copies.items()}


def test_the_plugin_holds_a_copy_of_every_mount_it_staged(tmp_path, serve):
    serve()
    client = MounterClient(f"unix://{tmp_path}/mounter.sock")
    try:
        state = client.stage(config(tmp_path))
        assert state.phase is Phase.SERVING and state.held
        assert state.device == device.device_of(config(tmp_path).mountpoint)
        [fd] = copies(client).values()
        assert device.is_fuse_device(fd) and device.connected(fd)
        with pytest.raises(AlreadyExists):  # the mounter's error, raised again here
            client.stage(config(tmp_path, readAhead="2"))
        client.unstage("v1")
        assert copies(client) == {} and client.states() == []
        assert not device.device_of(config(tmp_path).mountpoint)
    finally:
        client.close()


def test_a_restarted_mounter_gets_the_descriptor_back_and_resumes(tmp_path, serve, fakes):
    serve()
    client = MounterClient(f"unix://{tmp_path}/mounter.sock")
    try:
        before = client.stage(config(tmp_path))
        mounter = serve()  # its daemons died with it (fakes: nothing to adopt), no copy left
        [waiting] = mounter.states()
        assert waiting.phase is Phase.WAITING or not waiting.held
        client.states()  # the plugin hands its copy back
        [after] = wait_for(lambda: [s for s in mounter.states() if s.phase is Phase.SERVING],
                           10, "the daemon resumed")
        assert after.device == before.device and after.held
        assert mounts_at(config(tmp_path).mountpoint) == 1  # never mounted again
        assert len(fakes.started) == 2 and fakes.started[1].config.session_fd >= 0
        client.unstage("v1")
    finally:
        client.close()


def test_bad_requests_get_an_error_kind_back(tmp_path, serve):
    serve()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(tmp_path / "mounter.sock"))
        wire.send(sock, {"op": "format-disk"})
        answer, _ = wire.receive(sock)
        assert answer == {"ok": False, "error": {
            "kind": "InvalidArgument", "message": "unknown mounter request 'format-disk'"}}
        r, w = os.pipe()
        wire.send(sock, {"op": "hold", "volume_id": "v9", "device": "0:1"}, [r])
        os.close(r)
        os.close(w)
        answer, _ = wire.receive(sock)
        assert answer["ok"] is False and answer["error"]["kind"] == "NotFound"
    client = MounterClient(f"unix://{tmp_path}/mounter.sock")
    client.stage(config(tmp_path))
    r, w = os.pipe()
    try:
        with pytest.raises(InvalidArgument, match="not /dev/fuse"):
            client._call({"op": "hold", "volume_id": "v1", "device": "0:1"}, (r,))
    finally:
        os.close(r)
        os.close(w)
        client.unstage("v1")
        client.close()


def test_a_mounter_that_is_not_there_is_unavailable(tmp_path):
    client = MounterClient(f"unix://{tmp_path}/nobody.sock")
    with pytest.raises(Unavailable, match="nobody.sock does not answer"):
        client.states()
