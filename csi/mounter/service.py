"""`eddy mounter` on a unix socket, and the node plugin's client of it.

One request per frame (wire.py), one answer each:

    {"op": "stage", "config": {...}}              -> {"state": {...}}   + the descriptor
    {"op": "unstage", "volume_id": ID}            -> {}
    {"op": "states"}                              -> {"states": [{...}, ...]}
    {"op": "take", "volume_id": ID}               -> {"device": D}      + the descriptor
    {"op": "hold", "volume_id": ID, "device": D}  + the descriptor -> {}

Every answer carries "ok"; a failure carries {"error": {"kind": K, "message": M}}, and the
client raises the `eddy.base.errors` kind K again, so the node plugin answers CSI calls as if the
mounter ran in its own process. The socket is the mounter's whole API and hands out mount
descriptors: only root may use it (0600).

`MounterClient` also keeps the node plugin's own copy of every connection's descriptor:
each `states()` (the node service asks twice a second) takes a copy the plugin lacks and
hands back one the mounter lacks, so whichever of the two restarts, the other has it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from eddy.base import errors, log
from eddy.base.errors import EddyError, InvalidArgument, Unavailable
from eddy.base.sockets import born_private, claim_socket_path, socket_path

from ..daemons import DaemonConfig
from . import wire
from .mounter import Mounter
from .states import MountState

CALL_TIMEOUT = 30.0
STAGE_TIMEOUT = 180.0  # a stage waits for the daemon's READY (60 s) and may mount NFS first
_CONFIG_KEYS = ("volume_id", "mountpoint", "parameters", "secrets", "log_level", "engine",
                "writable")


class MounterServer:
    """Serves a `Mounter` on a unix socket, one thread per connection."""

    def __init__(self, mounter: Mounter, endpoint: str):
        self.mounter = mounter
        self.path = socket_path(endpoint)
        self._sock: socket.socket | None = None
        self._log = log.get("csi.mounter")

    def start(self) -> None:
        claim_socket_path(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with born_private():
            sock.bind(self.path)
        sock.listen(16)
        self._sock = sock
        threading.Thread(target=self._accept, name="mounter-accept", daemon=True).start()
        self._log.info("serving", endpoint=f"unix://{self.path}")

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed by stop()
            threading.Thread(target=self._serve, args=(conn,), name="mounter-conn",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    message, fds = wire.receive(conn)
                except (EOFError, OSError, ValueError):
                    return
                answer, out = self.handle(message, fds)
                try:
                    wire.send(conn, answer, out)
                except OSError:
                    return
                finally:
                    for fd in out:
                        os.close(fd)

    def handle(self, message: dict, fds: list[int]) -> tuple[dict, list[int]]:
        """Answer one request: (answer, descriptors to send, which the caller closes)."""
        op = message.get("op")
        try:
            if op == "hold":
                if len(fds) != 1:
                    raise InvalidArgument("hold carries exactly one descriptor")
                fd = fds.pop()
                self.mounter.hold(str(message["volume_id"]), fd, str(message["device"]))
                return {"ok": True}, []
            for fd in fds:
                os.close(fd)
            fds.clear()
            if op == "stage":
                # A key a plugin older than this mounter does not send keeps its default.
                config = DaemonConfig(**{k: message["config"][k] for k in _CONFIG_KEYS
                                         if k in message["config"]})
                state = self.mounter.stage(config)
                fd, _ = self.mounter.descriptor(config.volume_id)
                return {"ok": True, "state": state.to_dict()}, [fd]
            if op == "unstage":
                self.mounter.unstage(str(message["volume_id"]))
                return {"ok": True}, []
            if op == "states":
                return {"ok": True, "states": [s.to_dict() for s in self.mounter.states()]}, []
            if op == "take":
                fd, device = self.mounter.descriptor(str(message["volume_id"]))
                return {"ok": True, "device": device}, [fd]
            raise InvalidArgument(f"unknown mounter request {op!r}")
        except (KeyError, TypeError) as e:
            return _failure(InvalidArgument(f"malformed {op!r} request: {e}")), []
        except EddyError as e:
            return _failure(e), []
        except Exception as e:  # noqa: BLE001 - the client gets an answer, the log the trace
            self._log.exception("request failed", op=op)
            return _failure(EddyError(f"{type(e).__name__}: {e}")), []
        finally:
            for fd in fds:
                os.close(fd)


def _failure(e: EddyError) -> dict:
    return {"ok": False, "error": {"kind": type(e).__name__, "message": str(e)}}


def _raise(error: dict) -> None:
    kind = getattr(errors, str(error.get("kind")), EddyError)
    if not (isinstance(kind, type) and issubclass(kind, EddyError)):
        kind = EddyError
    raise kind(str(error.get("message")))


class MounterClient:
    """The `Mounter` methods the node service uses, over the mounter's socket."""

    def __init__(self, endpoint: str):
        self.path = socket_path(endpoint)
        self._copies: dict[str, tuple[str, int]] = {}  # volume id -> (device, descriptor)
        self._lock = threading.Lock()
        self._log = log.get("csi.mounter")

    def start(self) -> None:
        """Nothing to start: the node service's first `states()` takes the copies."""

    def close(self) -> None:
        """Let go of this process's copies (the mounter and the daemons keep theirs)."""
        with self._lock:
            for _, fd in self._copies.values():
                os.close(fd)
            self._copies.clear()

    def _call(self, message: dict, fds: tuple[int, ...] = (),
              timeout: float = CALL_TIMEOUT) -> tuple[dict, list[int]]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(self.path)
                wire.send(sock, message, fds)
                answer, received = wire.receive(sock)
        except (OSError, EOFError, ValueError) as e:
            raise Unavailable(f"the mounter at unix://{self.path} does not answer: {e}") from None
        if not answer.get("ok"):
            for fd in received:
                os.close(fd)
            _raise(answer.get("error") or {})
        return answer, received

    def stage(self, config: DaemonConfig) -> MountState:
        answer, fds = self._call({"op": "stage", "config": {
            k: getattr(config, k) for k in _CONFIG_KEYS}}, timeout=STAGE_TIMEOUT)
        state = MountState.from_dict(answer["state"])
        for fd in fds:
            self._keep(config.volume_id, state.device, fd)
        return state

    def unstage(self, volume_id: str) -> None:
        self._call({"op": "unstage", "volume_id": volume_id}, timeout=STAGE_TIMEOUT)
        self._drop(volume_id)

    def states(self) -> list[MountState]:
        """What the mounter has, after exchanging descriptor copies with it."""
        answer, _ = self._call({"op": "states"})
        states = [MountState.from_dict(s) for s in answer["states"]]
        for state in states:
            try:
                self._exchange(state)
            except EddyError as e:
                self._log.warning("descriptor.exchange_failed", volume_id=state.volume_id,
                                  error=str(e))
        return states

    def _exchange(self, state: MountState) -> None:
        with self._lock:
            mine = self._copies.get(state.volume_id)
        if mine is not None and mine[0] != state.device:
            self._drop(state.volume_id)  # a connection the mounter gave up: let it end
            mine = None
        if mine is None and state.held:
            answer, fds = self._call({"op": "take", "volume_id": state.volume_id})
            for fd in fds:
                self._keep(state.volume_id, answer["device"], fd)
        elif mine is not None and not state.held:
            copy = os.dup(mine[1])
            try:
                self._call({"op": "hold", "volume_id": state.volume_id, "device": mine[0]},
                           (copy,))
            finally:
                os.close(copy)
            self._log.info("descriptor.handed_back", volume_id=state.volume_id)

    def _keep(self, volume_id: str, device: str, fd: int) -> None:
        with self._lock:
            old = self._copies.get(volume_id)
            self._copies[volume_id] = (device, fd)
        if old is not None:
            os.close(old[1])

    def _drop(self, volume_id: str) -> None:
        with self._lock:
            old = self._copies.pop(volume_id, None)
        if old is not None:
            os.close(old[1])
