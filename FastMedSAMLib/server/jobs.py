"""Long predictions (3D propagation) as jobs: started by a predict request, polled for progress (each poll waits
at most a few seconds, so no HTTP request outlives proxy time-outs), cancelled by DELETE, kept a while when done.

A job runs in the process that took its predict request (that process holds the session). Behind Ray Serve a
poll may reach another replica, so the replicas share a `JobBoard` (`ray_serve.RayReplicaBoard`): the running replica
publishes progress and the result there, and any replica answers polls and cancellations from it."""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Protocol

from ..errors import JobCancelledError

BOARD_POLL_S = 0.05  # how often a poll for another replica's job re-reads the board while it waits


class JobBoard(Protocol):
    """Job state shared by several server processes; `snapshot`s are `Job.snapshot()` dicts."""

    def publish(self, snapshot: Dict[str, Any]) -> None: ...

    def read(self, job_id: str) -> Optional[Dict[str, Any]]: ...

    def cancel(self, job_id: str) -> None: ...


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
    board: Optional[JobBoard] = None

    def progress(self, done: int, total: int) -> None:
        """The Session's progress hook: records it and stops the work when the job was cancelled."""
        self.done, self.total = done, total
        if self.board is not None:
            self.board.publish(self.snapshot())
            self.cancelled = self.cancelled or bool((self.board.read(self.id) or {}).get("cancelled"))
        if self.cancelled:
            raise JobCancelledError("the 3D prediction was cancelled")

    def state(self) -> str:
        if not self.finished.is_set():
            return "running"
        return "failed" if self.error is not None else "done"

    def snapshot(self) -> Dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "done": self.done, "total": self.total, "result": self.result,
                "error": self.error, "finished": self.finished.is_set()}

    @classmethod
    def from_snapshot(cls, snapshot: Dict[str, Any]) -> "Job":
        job = cls(snapshot["id"], snapshot["owner"], snapshot["done"], snapshot["total"], snapshot["result"],
                  snapshot["error"], bool(snapshot.get("cancelled")))
        if snapshot["finished"]:
            job.finished.set()
        return job


class JobStore:
    def __init__(self, keep_s: float, board: Optional[JobBoard] = None) -> None:
        self.keep_s = keep_s
        self.board = board
        self._jobs: Dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, owner: str, work: Callable[[Job], bytes]) -> Job:
        job = Job(secrets.token_urlsafe(12), owner, board=self.board)
        with self._lock:
            now = time.monotonic()
            for jid in [j.id for j in self._jobs.values() if j.finished.is_set() and now - j.ended_at > self.keep_s]:
                del self._jobs[jid]
            self._jobs[job.id] = job
        if self.board is not None:
            self.board.publish(job.snapshot())

        def run() -> None:
            try:
                job.result = work(job)
            except BaseException as error:  # handed to the client when it polls
                job.error = error
            job.ended_at = time.monotonic()
            job.finished.set()
            if self.board is not None:
                self.board.publish(job.snapshot())

        threading.Thread(target=run, name=f"fastmedsam-job-{job.id[:6]}", daemon=True).start()
        return job

    def get(self, owner: str, job_id: str) -> Optional[Job]:
        """This process's job, else (with a board) another replica's as last published; None for no such job."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None and self.board is not None:
            snapshot = self.board.read(job_id)
            job = None if snapshot is None else Job.from_snapshot(snapshot)
        return job if job is not None and job.owner == owner else None

    def wait(self, owner: str, job_id: str, timeout: float) -> Optional[Job]:
        """`get`, after waiting up to `timeout` seconds for the job to finish: on its event when this process runs
        it, else by re-reading the board."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            if job.owner != owner:
                return None
            job.finished.wait(timeout)
            return job
        deadline = time.monotonic() + timeout
        job = self.get(owner, job_id)
        while job is not None and not job.finished.is_set() and time.monotonic() < deadline:
            time.sleep(min(BOARD_POLL_S, max(deadline - time.monotonic(), 0.0)))
            job = self.get(owner, job_id)
        return job

    def cancel(self, owner: str, job_id: str) -> bool:
        job = self.get(owner, job_id)
        if job is None:
            return False
        job.cancelled = True
        if self.board is not None:
            self.board.cancel(job_id)
        return True

    def running(self) -> int:
        with self._lock:
            return sum(not j.finished.is_set() for j in self._jobs.values())
