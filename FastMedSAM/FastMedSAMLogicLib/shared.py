"""One Logic and one prediction channel per Slicer process, shared by the module panel and the Segment Editor
effect: a model is loaded once, one request runs at a time, and the newest prompt wins whichever of them sent it.
Each consumer submits and polls under its own owner name (see `worker.PredictionWorker`)."""
from __future__ import annotations

from typing import Optional

from .logic import FastMedSAMLogic
from .worker import PredictionWorker

_logic: Optional[FastMedSAMLogic] = None
_worker: Optional[PredictionWorker] = None


def shared_logic(scene) -> FastMedSAMLogic:
    """The process's Logic for `scene` (a new one if the scene object changed)."""
    global _logic
    if _logic is None or _logic.scene is not scene:
        _logic = FastMedSAMLogic(scene)
    return _logic


def shared_worker(scene) -> PredictionWorker:
    """The process's prediction channel; it runs requests on `shared_logic(scene)`."""
    global _worker
    if _worker is None:
        _worker = PredictionWorker(lambda request: shared_logic(scene).predict(request))
    return _worker


def close() -> None:
    """Stop the channel (module reload, application exit); the next `shared_worker` starts a new one."""
    global _worker
    if _worker is not None:
        _worker.close()
        _worker = None
