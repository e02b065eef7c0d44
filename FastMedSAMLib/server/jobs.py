"""Long predictions (3D propagation) as jobs: started by a predict request, polled for progress (each poll waits
at most a few seconds, so no HTTP request outlives proxy time-outs), cancelled by DELETE, kept a while when done."""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from ..errors import JobCancelledError


@dataclass
class Job:
    id: str
    owner: str
    done: int = 0
    total: int = 0
    result: Optional[bytes] = None
    error: Optional[BaseException] = None
    cancelled: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    ended_at: float = 0.0

    def progress(self, done: int, total: int) -> None:
        """The Session's progress hook: records it and stops the work when the job was cancelled."""
        self.done, self.total = done, total
        if self.cancelled:
            raise JobCancelledError("the 3D prediction was cancelled")

    def state(self) -> str:
        if not self.finished.is_set():
            return "running"
        return "failed" if self.error is not None else "done"


class JobStore:
    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._jobs: Dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, owner: str, work: Callable[[Job], bytes]) -> Job:
        job = Job(secrets.token_urlsafe(12), owner)
        with self._lock:
            now = time.monotonic()
            for jid in [j.id for j in self._jobs.values() if j.finished.is_set() and now - j.ended_at > self.keep_s]:
                del self._jobs[jid]
            self._jobs[job.id] = job

        def run() -> None:
            try:
                job.result = work(job)
            except BaseException as error:  # handed to the client when it polls
                job.error = error
            job.ended_at = time.monotonic()
            job.finished.set()

        threading.Thread(target=run, name=f"fastmedsam-job-{job.id[:6]}", daemon=True).start()
        return job

    def get(self, owner: str, job_id: str) -> Optional[Job]:
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def running(self) -> int:
        with self._lock:
            return sum(not j.finished.is_set() for j in self._jobs.values())
