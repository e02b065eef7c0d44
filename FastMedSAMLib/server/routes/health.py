"""Liveness: answered on the event loop, so it stays quick while uploads and predictions run in worker threads."""
from __future__ import annotations

from fastapi import APIRouter

from ...client.protocol import API_VERSION, PATH_HEALTH
from ..deps import State

router = APIRouter(tags=["health"])


@router.get(PATH_HEALTH)
async def healthz(state: State) -> dict:
    return {"status": "ok", "api": API_VERSION, "sessions": len(state.sessions), "jobs_running": state.jobs.running(),
            "auth": state.auth.required}
