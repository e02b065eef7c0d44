"""Sessions (model + image digest + window) and their predictions. A session the server no longer knows answers
410 and the client rebuilds it; a 3D box runs as a job (202) the client polls."""
from __future__ import annotations

import math
from typing import List, Optional

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ...client import protocol as p
from ...client.serialization import unpack_frame, unpack_mask
from ...errors import ImageError, UploadError
from ...pause.knob import validate_pause
from ...weights.registry import get_spec
from ..deps import Owner, State, read_body
from ..state import log

router = APIRouter(tags=["sessions"])


class OpenSession(BaseModel):
    model: str = Field(default="litemedsam", max_length=100)
    image: str = Field(pattern="^[0-9a-f]{40}$")
    window: Optional[List[float]] = Field(default=None, min_length=2, max_length=2)
    points_as_box: bool = False


class Prefetch(BaseModel):
    center: Optional[int] = Field(default=None, ge=0)
    slices: Optional[List[int]] = Field(default=None, max_length=100_000)
    pause: float = 0.0


def gone(what: str = "session") -> JSONResponse:
    return JSONResponse({"error": {"type": p.GONE, "message": f"this {what} expired or the server restarted; open it again"}},
                        status_code=410)


def _session_link(operation_id: str) -> dict:
    return {"operationId": operation_id, "parameters": {"session_id": "$response.body#/session"}}


# OpenAPI links: what a client (and schemathesis' stateful tests) can do with the session id an open answers
SESSION_LINKS = {"responses": {"201": {"description": "the session", "links": {
    "SessionInfo": _session_link("session_info"), "CloseSession": _session_link("close_session"),
    "Predict": _session_link("predict"), "Prefetch": _session_link("prefetch")}}}}


@router.post(p.PATH_SESSIONS, status_code=201, operation_id="open_session", openapi_extra=SESSION_LINKS)
async def open_session(body: OpenSession, state: State, owner: Owner):
    get_spec(body.model)  # RegistryError (404) for an unknown model
    window = None
    if body.window is not None:
        lo, hi = body.window
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ImageError(f"window must be finite with lo < hi, got ({lo}, {hi})")
        window = (float(lo), float(hi))
    if state.blobs.get(owner, body.image) is None:
        return JSONResponse({"error": {"type": p.IMAGE_MISSING, "message": "upload the image first"}}, status_code=409)
    record = state.sessions.open(owner, body.model, body.image, window, body.points_as_box)
    log.info("session opened owner=%s image=%s model=%s", owner, body.image[:12], body.model)
    return {"session": record.id}


@router.get(p.PATH_SESSION, operation_id="session_info")
async def session_info(session_id: str, state: State, owner: Owner):
    record = state.sessions.get(owner, session_id)
    if record is None:
        return gone()
    return {"session": record.id, "model": record.model, "image": record.digest, "window": record.window}


@router.delete(p.PATH_SESSION, status_code=204, operation_id="close_session")
async def close_session(session_id: str, state: State, owner: Owner):
    if not state.sessions.close(owner, session_id):
        return gone()
    await run_in_threadpool(state.pool.stop_prefetch, session_id)  # nobody waits for those slices any more
    return Response(status_code=204)


@router.post(p.PATH_PREDICT, status_code=200, operation_id="predict", openapi_extra={
    "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def predict(session_id: str, request: Request, state: State, owner: Owner):
    body = await read_body(request, state.max_body_bytes)
    record = state.sessions.get(owner, session_id)
    if record is None:
        return gone()
    image = state.blobs.get(owner, record.digest)
    if image is None:  # evicted from the blob store: the client re-uploads and reopens
        state.sessions.close(owner, session_id)
        return gone()
    header, _ = unpack_frame(body, state.max_body_bytes)
    if header.get("kind") not in ("prompt", "mask") or not isinstance(header.get("prompts", {}), dict):
        raise UploadError("a predict body is a frame whose header holds 'prompts' (and 'pause')")
    validate_pause(header.get("pause", 0.0))
    mask = unpack_mask(body)[0] if header.get("kind") == "mask" else None
    if "box3d" in (header.get("prompts") or {}):
        job = state.jobs.start(owner, lambda job: state.predict_frame(record, image, header, mask, job.progress))
        return JSONResponse({"job": job.id}, status_code=202)
    frame = await run_in_threadpool(state.predict_frame, record, image, header, mask)
    return Response(frame, media_type=p.FRAME_MEDIA_TYPE)


@router.post(p.PATH_PREFETCH, status_code=202, operation_id="prefetch")
async def prefetch(session_id: str, body: Prefetch, state: State, owner: Owner):
    """Encode the session's slices in the background (`center` first, then outward): later prompts on them skip
    the encoder. Best effort: any prediction pre-empts it, one on another image stops it."""
    record = state.sessions.get(owner, session_id)
    image = None if record is None else state.blobs.get(owner, record.digest)
    if record is None or image is None:
        return gone()
    validate_pause(body.pause)
    queued = await run_in_threadpool(state.pool.prefetch, record, image, body.pause, body.slices, body.center)
    return {"slices": queued}
