"""Jobs: a poll waits at most `wait` seconds (≤ 10) and answers progress JSON, or the result frame when done."""
from __future__ import annotations

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool

from ...client import protocol as p
from ..deps import Owner, State
from .sessions import gone

router = APIRouter(tags=["jobs"])


@router.get(p.PATH_JOB)
async def poll_job(job_id: str, state: State, owner: Owner, wait: float = Query(default=0.0, ge=0.0, le=10.0)):
    job = await run_in_threadpool(state.jobs.wait, owner, job_id, wait)
    if job is None:
        return gone("job")
    if not job.finished.is_set():
        return {"state": job.state(), "done": job.done, "total": job.total, "waited": bool(wait)}
    if job.error is not None:
        raise job.error
    return Response(job.result, media_type=p.FRAME_MEDIA_TYPE)


@router.delete(p.PATH_JOB, status_code=204)
async def cancel_job(job_id: str, state: State, owner: Owner):
    return Response(status_code=204) if state.jobs.cancel(owner, job_id) else gone("job")
