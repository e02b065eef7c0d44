"""Dependencies the routes declare: the server state and the caller's identity (token name)."""
from __future__ import annotations

from typing import Annotated, Optional

from fastapi import Depends, Header, Request

from ..errors import LimitError
from .state import ServerState


def get_state(request: Request) -> ServerState:
    return request.app.state.fastmedsam


def get_owner(request: Request, authorization: Optional[str] = Header(default=None)) -> str:
    return get_state(request).auth.identify(authorization)


State = Annotated[ServerState, Depends(get_state)]
Owner = Annotated[str, Depends(get_owner)]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise LimitError(f"the body is {declared} bytes; this server takes at most {limit} (FASTMEDSAM_MAX_BODY_MB)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise LimitError(f"the body exceeds {limit} bytes (FASTMEDSAM_MAX_BODY_MB)")
        chunks.append(chunk)
    return b"".join(chunks)
