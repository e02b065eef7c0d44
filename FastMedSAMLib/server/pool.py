"""One warm `Session` per model (weights loaded once), shared by every client session on that model under a lock:
before a prediction the lock holder points the Session at its image (a no-op when the last one used it) and knob.
Embeddings of every image stay in the model's byte-bounded LRU cache, keyed by image identity and knob."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ..errors import BackendBusyError
from ..io.images import Image
from .stores import ServerSession


class ModelSlot:
    def __init__(self, session: Any) -> None:
        self.session = session
        self.lock = threading.Lock()
        self.current: Optional[Tuple[str, Any]] = None  # (digest, window) the Session holds now
        self.waiting = 0
        self.prefetching: Optional[str] = None  # the client session whose prefetch runs (or ran last)


class ModelPool:
    def __init__(self, factory: Callable[[str], Any], max_queue: int) -> None:
        self._factory = factory
        self._slots: Dict[str, ModelSlot] = {}
        self._create = threading.Lock()
        self.max_queue = max_queue

    def slot(self, model: str) -> ModelSlot:
        with self._create:
            if model not in self._slots:
                self._slots[model] = ModelSlot(self._factory(model))
            return self._slots[model]

    def loaded(self) -> Dict[str, ModelSlot]:
        return dict(self._slots)

    def run(self, record: ServerSession, image: Image, pause: float, work: Callable[[Any], Any]) -> Tuple[Any, float]:
        """`work(session)` with the model's Session on `record`'s image and `pause`; (result, ms queued)."""
        slot = self.slot(record.model)
        with self._create:
            if slot.waiting >= self.max_queue:
                raise BackendBusyError(f"{slot.waiting} requests already wait for model {record.model!r}", retry_after=1.0)
            slot.waiting += 1
        start = time.perf_counter()
        try:
            with slot.lock:
                queued = (time.perf_counter() - start) * 1000.0
                key = (record.digest, record.window)
                session = slot.session
                if slot.current != key:
                    slot.current = None  # a failed set_image must not leave a stale marker
                    session.points_as_box = record.points_as_box
                    session.set_image(image, window=record.window)
                    slot.current = key
                session.points_as_box = record.points_as_box
                session.set_pause(pause)
                return work(session), queued
        finally:
            with self._create:
                slot.waiting -= 1

    def prefetch(self, record: ServerSession, image: Image, pause: float, slices: Optional[Sequence[int]],
                 center: Optional[int]) -> int:
        """Start encoding `record`'s slices in the background on the model's Session (the viewed slice first);
        the number of slices queued. Any prediction pre-empts it; one on another image stops it (`set_image`)."""
        job, _ = self.run(record, image, pause, lambda session: session.prefetch(slices=slices, center=center))
        self.slot(record.model).prefetching = record.id
        return len(job.order)

    def stop_prefetch(self, session_id: Optional[str] = None) -> None:
        """Stop the background encoding started for `session_id` (closed by its client), or every one (shutdown)."""
        for slot in self.loaded().values():
            if session_id is None or slot.prefetching == session_id:
                cancel = getattr(slot.session, "cancel_prefetch", None)
                if cancel is not None:
                    cancel()
