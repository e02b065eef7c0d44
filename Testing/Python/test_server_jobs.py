"""What Ray Serve replicas share, through one board (the plain class the Ray actor wraps): a 3D job started on one
replica is polled, finished and cancelled through another; a session opened on one is served by another; both stay
private to their owner."""
from __future__ import annotations

import threading

import pytest

from FastMedSAMLib.errors import JobCancelledError
from FastMedSAMLib.server.jobs import JobStore
from FastMedSAMLib.server.ray_serve import ReplicaBoardActor


@pytest.fixture()
def replicas():
    board = ReplicaBoardActor(keep_s=60.0)
    return JobStore(60.0, board), JobStore(60.0, board)


def test_a_job_started_on_one_replica_is_polled_on_the_other(replicas) -> None:
    a, b = replicas
    release = threading.Event()

    def work(job):
        for done in range(1, 4):
            job.progress(done, 3)
        release.wait(10)
        return b"the mask frame"

    job = a.start("alice", work)
    running = b.wait("alice", job.id, 0.2)
    assert running is not None and not running.finished.is_set() and (running.done, running.total) == (3, 3)
    release.set()
    finished = b.wait("alice", job.id, 10.0)
    assert finished.finished.is_set() and finished.state() == "done" and finished.result == b"the mask frame"
    assert b.get("bob", job.id) is None and b.get("alice", "no-such-job") is None


def test_a_cancel_on_the_other_replica_stops_the_work(replicas) -> None:
    a, b = replicas
    started = threading.Event()

    def work(job):
        done = 0
        while True:  # a long propagation: only the cancel ends it
            done += 1
            started.set()
            job.progress(done, 10**6)

    job = a.start("alice", work)
    assert started.wait(10)
    assert b.cancel("alice", job.id) and not b.cancel("bob", job.id)
    ended = b.wait("alice", job.id, 10.0)
    assert ended.finished.is_set() and isinstance(ended.error, JobCancelledError)
    assert a.running() == 0


def test_the_board_forgets_finished_jobs_after_keep_s() -> None:
    board = ReplicaBoardActor(keep_s=0.0)
    a, b = JobStore(0.0, board), JobStore(0.0, board)
    job = a.start("alice", lambda job: b"done")
    assert b.wait("alice", job.id, 10.0).finished.is_set()
    a.start("alice", lambda job: b"a later job")  # publishing prunes what expired
    assert b.get("alice", job.id) is None


def test_a_session_opened_on_one_replica_is_served_by_another() -> None:
    from FastMedSAMLib.server.stores import SessionRegistry

    board = ReplicaBoardActor(keep_s=60.0)
    a, b, c = (SessionRegistry(4, 600.0, board) for _ in range(3))
    opened = a.open("alice", "litemedsam", "d" * 40, (-100.0, 200.0), False)
    seen = b.get("alice", opened.id)
    assert seen is not None and (seen.model, seen.digest, seen.window) == ("litemedsam", "d" * 40, (-100.0, 200.0))
    assert b.get("bob", opened.id) is None  # private to its owner on every replica
    assert b.close("alice", opened.id)
    assert c.get("alice", opened.id) is None  # closed everywhere it was not served yet


def test_a_session_that_expired_is_forgotten_by_the_board() -> None:
    from FastMedSAMLib.server.stores import SessionRegistry

    board = ReplicaBoardActor(keep_s=60.0)
    a, b = SessionRegistry(4, 0.0, board), SessionRegistry(4, 600.0, board)
    opened = a.open("alice", "litemedsam", "d" * 40, None, False)
    assert a.get("alice", opened.id) is None  # idle longer than 0 s: expired here, and not recalled again
    assert b.get("alice", opened.id) is None and not board.sessions  # nor by another replica
