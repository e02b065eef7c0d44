"""Background prefetch of slice embeddings, and the gate that lets a prompt pre-empt it.

One lock guards the model (its forward and the embedding cache). A prompt announces itself before it waits for
the lock; the prefetch thread takes the lock only while no prompt is announced, for one slice at a time, and checks
again before every slice. A prompt therefore waits at most for the one slice encode already running, never for
the rest of the volume. Prefetch only fills the cache with the embeddings a prompt would compute itself (same
encoder, same key), so it never changes a result.

Prefetches run on one long-lived thread per Session (`BackgroundThread`), not a new thread each: on a GPU a
thread's first convolution builds cuDNN's per-thread execution plans (measured on an H200: 1.5 s for the fused and
float16 encoders, 0.05 s for the float32 eager one), which a fresh thread per prefetch paid every time — while
holding the model, so a prompt could wait that long.
"""
from __future__ import annotations

import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .slice_engine import SliceEngine


class ModelGate:
    """The model's lock, with prompts served before background work."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._prompts = 0

    @contextmanager
    def prompt(self) -> Iterator[None]:
        """Hold the model for a prompt (or any foreground change); background work yields from its next slice."""
        with self._changed:
            self._prompts += 1
        try:
            with self._lock:
                yield
        finally:
            with self._changed:
                self._prompts -= 1
                self._changed.notify_all()

    @contextmanager
    def background(self, cancelled: threading.Event) -> Iterator[bool]:
        """Hold the model for one unit of background work once no prompt is waiting; yields False if cancelled."""
        while True:
            with self._changed:
                while self._prompts and not cancelled.is_set():
                    self._changed.wait(0.05)
            if cancelled.is_set():
                yield False
                return
            self._lock.acquire()
            if not self._prompts:  # no prompt slipped in between: go
                break
            self._lock.release()
        try:
            yield True
        finally:
            self._lock.release()


def outward(slices: Sequence[int], center: int) -> List[int]:
    """`slices` ordered by distance from `center` (the viewed slice first; above before below on ties)."""
    return sorted(dict.fromkeys(int(z) for z in slices), key=lambda z: (abs(z - center), z < center))


class BackgroundThread:
    """One daemon thread, started on first use, that runs submitted jobs one after another."""

    def __init__(self, name: str = "fastmedsam-prefetch") -> None:
        self.name = name
        self._jobs: "queue.SimpleQueue[Tuple[Callable[[], None], threading.Event]]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> threading.Event:
        """Queue `job`; the returned event is set once it has run (exceptions are the job's own to catch)."""
        done = threading.Event()
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
        self._jobs.put((job, done))
        return done

    def _loop(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                job()
            finally:
                done.set()


@dataclass
class Prefetch:
    """A running (or finished) prefetch. `encoded` lists the slices it encoded, `timeline` (slice, start s, end s)
    relative to its start; `cancel()` stops it before its next slice."""

    order: List[int]
    encoded: List[int] = field(default_factory=list)
    timeline: List[Tuple[int, float, float]] = field(default_factory=list)
    stopped_by: Optional[str] = None  # "cancel", "cache" (the cache budget is full) or None (finished the list)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: Optional[threading.Event] = field(default=None, repr=False)
    error: Optional[BaseException] = None

    def cancel(self) -> None:
        self._cancelled.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until it stops; True if it has."""
        return self._done is None or self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done is None or self._done.is_set()


def start_prefetch(engine: SliceEngine, gate: ModelGate, key_prefix: Hashable, volume_u8: np.ndarray,
                   order: List[int], thread: BackgroundThread) -> Prefetch:
    """Encode `volume_u8[z]` for z in `order` into `engine`'s cache on `thread`, one slice per lock hold.

    Stops early once the slices it encoded would fill the cache (so it never evicts what it just prefetched)."""
    job = Prefetch(order=list(order))
    start = time.perf_counter()

    def run() -> None:
        per_slice = 0
        try:
            for z in job.order:
                with gate.background(job._cancelled) as go:
                    if not go:
                        job.stopped_by = "cancel"
                        return
                    if per_slice and (len(job.encoded) + 1) * per_slice > engine.cache.max_bytes:
                        job.stopped_by = "cache"
                        return
                    began = time.perf_counter() - start
                    if engine.ensure_embedding((key_prefix, z), volume_u8[z]):
                        job.encoded.append(z)
                        job.timeline.append((z, began, time.perf_counter() - start))
                        per_slice = per_slice or engine.cache.entry_bytes((engine.encoder_tag, (key_prefix, z)))
        except BaseException as exc:  # reported on the job; a failed prefetch must not take the session down
            job.error = exc

    job._done = thread.submit(run)
    return job
