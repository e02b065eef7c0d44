"""Liveness: answered on the event loop, so it stays quick while uploads and predictions run in worker threads."""
from __future__ import annotations

import sys

from fastapi import APIRouter

from ...client.protocol import API_VERSION, PATH_HEALTH
from ..deps import State

router = APIRouter(tags=["health"])


@router.get(PATH_HEALTH)
async def healthz(state: State) -> dict:
    return {"status": "ok", "api": API_VERSION, "sessions": len(state.sessions), "jobs_running": state.jobs.running(),
            "auth": state.auth.required, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb():
    """The server process's peak resident memory (what the store bounds keep in check); None where unknown."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux
