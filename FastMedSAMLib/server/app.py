"""`create_app(settings)`: the FastAPI application. Every `FastMedSAMError` becomes one JSON answer,
`{"error": {"type", "message"}}`, with the status `protocol.STATUS_FOR` gives (400 otherwise) and Retry-After
when the server is busy; the client raises the same type again."""
from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import Any, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__
from ..client import protocol as p
from ..errors import BackendBusyError, FastMedSAMError
from .routes import health, images, jobs, models, sessions
from .settings import ServerSettings
from .state import ReplicaBoard, ServerState


def create_app(settings: Optional[ServerSettings] = None,
               session_factory: Optional[Callable[[str], Any]] = None, board: Optional[ReplicaBoard] = None) -> FastAPI:
    """The server app. `session_factory(model)` builds a model's Session (default: `Session` on settings.device);
    `board` shares session records and 3D jobs with other replicas (Ray Serve)."""
    settings = settings or ServerSettings()
    state = ServerState.build(settings, session_factory, board)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.pool.stop_prefetch()  # no background encoding may outlive the server (nor run into interpreter exit)

    app = FastAPI(title="FastMedSAM server", version=__version__, lifespan=lifespan,
                  description="Interactive medical segmentation behind the Session API (see FastMedSAMLib.client).")
    app.state.fastmedsam = state
    for module in (health, models, images, sessions, jobs):
        app.include_router(module.router)

    @app.exception_handler(FastMedSAMError)
    async def fastmedsam_error(request: Request, error: FastMedSAMError) -> JSONResponse:
        status = p.STATUS_FOR.get(type(error).__name__, 400)
        headers = {}
        if isinstance(error, BackendBusyError):
            headers[p.HEADER_RETRY_AFTER] = str(max(1, int(round(error.retry_after))))
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(p.error_body(error), status_code=status, headers=headers)

    @app.middleware("http")
    async def server_time(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        response.headers[p.HEADER_SERVER_MS] = f"{(time.perf_counter() - start) * 1000.0:.3f}"
        return response

    return app
