"""Images by content digest, scoped to the caller's token: HEAD says whether the server holds it, PUT uploads a
compressed frame that the server decompresses, re-hashes and refuses on any mismatch."""
from __future__ import annotations

from fastapi import APIRouter, Path, Request, Response
from fastapi.concurrency import run_in_threadpool

from ...client.protocol import PATH_IMAGE
from ...client.serialization import unpack_image
from ...errors import UploadError
from ...io.images import Image
from ..deps import Owner, State, read_body
from ..state import log

router = APIRouter(tags=["images"])
Digest = Path(pattern="^[0-9a-f]{40}$", description="blake2b-160 of voxels + geometry (client.serialization.image_digest)")


@router.head(PATH_IMAGE)
async def has_image(state: State, owner: Owner, digest: str = Digest) -> Response:
    return Response(status_code=200 if state.blobs.get(owner, digest) is not None else 404)


@router.put(PATH_IMAGE, status_code=201, openapi_extra={
    "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def put_image(request: Request, state: State, owner: Owner, digest: str = Digest) -> dict:
    body = await read_body(request, state.max_body_bytes)
    settings = state.settings

    def decode() -> Image:
        found, array, geometry = unpack_image(body, settings.max_voxels, settings.max_voxels * 8)
        if found != digest:
            raise UploadError("the image was sent under another digest than its content's: nothing was stored")
        return Image.from_array(array, spacing=geometry["spacing"], origin=geometry["origin"],
                                direction=geometry["direction"], modality=geometry["modality"])

    image = await run_in_threadpool(decode)
    state.blobs.put(owner, digest, image)
    log.info("image stored owner=%s image=%s shape=%s bytes_sent=%d", owner, digest[:12], image.array.shape, len(body))
    return {"image": digest, "shape": list(image.array.shape)}
