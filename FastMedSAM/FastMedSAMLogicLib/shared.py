"""One Logic and one prediction channel per Slicer process, shared by the module panel and the Segment Editor
effect: one request runs at a time, and the newest prompt wins whichever of them sent it. Each consumer submits
and polls under its own owner name (see `worker.PredictionWorker`).

Predictions never run in Slicer's Python: the Logic's sessions are `RemoteSession`s to a backend, either the
local one (`fastmedsam serve` started as a child process on 127.0.0.1, see `backend_process`) or a server the user
names (URL + token). The channel's thread only does socket I/O, which releases the GIL while it waits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from FastMedSAMLib.api import SessionLike
from FastMedSAMLib.errors import AuthError, BackendBusyError, BackendError, BackendUnreachableError, FastMedSAMError

from .backend_process import local_backend
from .logic import FastMedSAMLogic
from .worker import PredictionWorker

LOCAL = "local"
SERVER = "server"


@dataclass(frozen=True)
class BackendChoice:
    mode: str = LOCAL  # LOCAL: the automatic child process; SERVER: url + token
    url: str = ""
    token: str = ""


_logic: Optional[FastMedSAMLogic] = None
_worker: Optional[PredictionWorker] = None
_choice = BackendChoice()
_progress = (0, 0)  # (slices done, slices in all) of the running 3D prediction


def _record_progress(done: int, total: int) -> None:
    global _progress
    _progress = (done, total)


def progress() -> tuple:
    """(done, total) slices of the running 3D prediction, (0, 0) when none; read by the GUI's poll timer."""
    return _progress


def connect(model: str, device: str) -> SessionLike:
    """A RemoteSession on the chosen backend (starts the local one on first use; runs on the I/O thread)."""
    from FastMedSAMLib.client.remote_session import RemoteSession

    if _choice.mode == SERVER:
        if not _choice.url:
            raise BackendError("choose a server URL for the Server backend")
        return RemoteSession(_choice.url, token=_choice.token or None, model=model)
    backend = local_backend(device)
    return RemoteSession(backend.url, token=backend.token, model=model)


def choose_backend(mode: str, url: str = "", token: str = "") -> None:
    """Switch backend; the Logic's sessions are dropped so the next prediction connects to the new one."""
    global _choice
    if mode not in (LOCAL, SERVER):
        raise ValueError(f"backend must be {LOCAL!r} or {SERVER!r}, got {mode!r}")
    choice = BackendChoice(mode, url.strip(), token.strip())
    if choice != _choice and _logic is not None:
        _logic.release_sessions()
    _choice = choice


def backend_choice() -> BackendChoice:
    return _choice


def connection_state(error: Optional[BaseException] = None) -> str:
    """Plain words for the panel: what the last outcome says about the backend."""
    where = "local backend" if _choice.mode == LOCAL else _choice.url or "server"
    if error is None:
        return f"connected ({where})"
    if isinstance(error, AuthError):
        return f"unauthorised ({where}): check the token"
    if isinstance(error, BackendBusyError):
        return f"server busy ({where}): retry in {error.retry_after:.0f} s"
    if isinstance(error, BackendUnreachableError):
        return f"unreachable ({where})"
    if isinstance(error, BackendError):
        return f"backend error ({where}): {error}"
    if isinstance(error, FastMedSAMError):
        return f"connected ({where})"  # a prompt or image problem, reported on its own
    return f"backend error ({where}): {error}"


def shared_logic(scene) -> FastMedSAMLogic:
    """The process's Logic for `scene` (a new one if the scene object changed); its sessions are remote."""
    global _logic
    if _logic is None or _logic.scene is not scene:
        _logic = FastMedSAMLogic(scene, session_factory=connect)
    return _logic


def shared_worker(scene) -> PredictionWorker:
    """The process's prediction channel: a thread that sends `shared_logic(scene).predict` to the backend."""
    global _worker
    if _worker is None:
        def run(request):
            _record_progress(0, 0)
            return shared_logic(scene).predict(request, progress=_record_progress)

        _worker = PredictionWorker(run, name="FastMedSAM-backend-io")
    return _worker


def close() -> None:
    """Stop the channel (module reload, application exit); the next `shared_worker` starts a new one. The local
    backend keeps running for the next scene and stops when Slicer exits."""
    global _worker
    if _worker is not None:
        _worker.close()
        _worker = None
