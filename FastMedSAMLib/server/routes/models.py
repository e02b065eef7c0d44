"""The models this server can run, and each loaded model's embedding cache."""
from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from ...client.protocol import PATH_CACHE, PATH_MODELS
from ...pause import supports_pause
from ...weights.registry import get_spec, list_specs
from ..deps import Owner, State

router = APIRouter(tags=["models"])


@router.get(PATH_MODELS)
async def models(state: State, owner: Owner) -> dict:
    loaded = state.pool.loaded()
    return {"models": [
        {"name": s.name, "dimensionality": s.dimensionality, "prompts": list(s.prompts), "pause": supports_pause(s.name),
         "loaded": s.name in loaded}
        for s in list_specs() if s.role == "model"
    ]}


@router.get(PATH_CACHE)
async def cache_info(model: str, state: State, owner: Owner) -> dict:
    get_spec(model)  # RegistryError (404) for an unknown model
    slot = state.pool.loaded().get(model)
    return slot.session.cache_info() if slot else {"entries": 0, "bytes": 0, "hits": 0, "misses": 0}


@router.delete(PATH_CACHE, status_code=204)
async def clear_cache(model: str, state: State, owner: Owner) -> Response:
    get_spec(model)
    slot = state.pool.loaded().get(model)
    if slot is not None:
        def clear() -> None:
            with slot.lock:
                slot.session.clear_cache()
        await run_in_threadpool(clear)
    return Response(status_code=204)
