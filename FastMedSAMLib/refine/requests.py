"""What a Session does with a refinement model's prompts: validate them (every bad input is a PromptError raised
before anything runs) and route them to the 2D slice or the 3D volume path of `RefineEngine`.

2D: `box=Box(..., z=k)` and/or `points` on slice k and/or `mask` = the previous (H, W) mask -> an (H, W) mask.
3D: `box=Box3D(...)` and/or `points` and/or `mask` = the previous (Z, Y, X) mask -> a (Z, Y, X) mask. A volume
prompt is 3D when it has a Box3D or a volume mask, or points on more than one slice; else it is 2D on its slice.
A first prompt (no box, no non-empty mask) needs at least one include point."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import numpy as np

from ..api import Prediction
from ..errors import PromptError
from ..prompts import Box, Box3D, Point
from .engine import RefineEngine


def refine_engine(session: Any) -> RefineEngine:
    """The session's RefineEngine (made once, when the Session is made), with the base model's own decoder beside
    the fine-tuned one (see `engine`)."""
    engine = getattr(session, "_refine_engine", None)
    if engine is None:
        engine = session._refine_engine = RefineEngine(session._engine, base_decoder(session))
    return engine


def base_decoder(session: Any) -> Any:
    """The prompt encoder + mask decoder of the session's base model (LiteMedSAM's, from its verified file), run by
    the session's runtime on its device; None for a model without a base."""
    from ..models import load_model
    from ..runtime import build_decoder

    base = session.spec.base
    if base is None:
        return None
    net = load_model(base, session.device)
    del net.image_encoder  # the session's encoder makes the embeddings
    return build_decoder(session.runtime, net, base, session.device)


def _binary(mask: Any, shape: tuple, what: str) -> np.ndarray:
    array = np.asarray(mask)
    if array.shape != shape:
        raise PromptError(f"previous mask has shape {array.shape}; {what} has {shape}")
    return array != 0


def _needs_include(box: Any, points: Sequence[Point], mask: Optional[np.ndarray]) -> None:
    if box is None and (mask is None or not mask.any()) and not any(p.positive for p in points):
        raise PromptError(
            "an exclude-only first prompt says where the object is not, not where it is: start with a box, an "
            "include point or a previous mask"
        )


def predict(session: Any, box: Optional[Union[Box, Box3D]], points: Optional[Sequence[Point]], mask: Any) -> Prediction:
    points = list(points or [])
    if box is None and not points and mask is None:
        raise PromptError(f"no prompt: model {session.model_name!r} needs a box, points or a previous mask")
    for p in points:
        if not isinstance(p, Point):
            raise PromptError(f"points must be Point objects, got {type(p).__name__}")
        p.check_inside(session._shape_zyx())
    depth, height, width = session._shape_zyx()
    volume = session.is_volume
    mask_ndim = None if mask is None else np.ndim(mask)
    slices = {int(round(p.z)) for p in points if p.z is not None}
    three_d = volume and (isinstance(box, Box3D) or mask_ndim == 3 or (box is None and len(slices) > 1))
    if three_d:
        return _predict_volume(session, box, points, mask, (depth, height, width))
    if isinstance(box, Box3D):
        raise PromptError("a 3D box needs a volume; this image is 2D (use Box)")
    return _predict_slice(session, box, points, mask, (depth, height, width))


def _slice_index(session: Any, box: Optional[Box], points: List[Point], depth: int) -> int:
    if not session.is_volume:
        if (box is not None and box.z not in (None, 0)) or any(p.z not in (None, 0) for p in points):
            raise PromptError("slice indices given for a 2D image (use z=None)")
        return 0
    zs = {int(round(p.z)) for p in points if p.z is not None}
    if any(p.z is None for p in points):
        raise PromptError("a point on a volume needs its slice: Point(x, y, z=k)")
    if box is not None:
        if box.z is None:
            raise PromptError(f"a 2D box on a volume needs its slice: Box(..., z=k) with 0 <= k < {depth}")
        if int(box.z) != box.z or not 0 <= box.z < depth:
            raise PromptError(f"box slice z={box.z} is not a slice index of this volume (0..{depth - 1})")
        zs.add(int(box.z))
    if len(zs) != 1:
        raise PromptError(f"a 2D prompt lies on one slice; got slices {sorted(zs)} (use a Box3D or a volume mask for 3D)")
    return zs.pop()


def _predict_slice(session: Any, box: Optional[Box], points: List[Point], mask: Any, shape: tuple) -> Prediction:
    depth, height, width = shape
    z = _slice_index(session, box, points, depth)
    previous = None if mask is None else _binary(mask, (height, width), "the image slice (H, W)")
    _needs_include(box, points, previous)
    clipped = None if box is None else box.clipped(height, width)
    slice_u8 = session._u8[z] if session.is_volume else session._u8
    result = refine_engine(session).segment((session._image_key, z), slice_u8, clipped, points, previous)
    return Prediction(
        mask=result.mask, timings=dict(result.timings), slice_index=z if session.is_volume else None,
        encoder_calls=int(result.encoded), iou=result.iou,
        prompt={"box": clipped, "points": points, "mask": previous is not None}, paused_by_block=result.paused,
    )


def _predict_volume(session: Any, box: Optional[Box3D], points: List[Point], mask: Any, shape: tuple) -> Prediction:
    depth, height, width = shape
    if box is not None and not isinstance(box, Box3D):
        raise PromptError("with a previous volume mask or points on several slices, the box must be a Box3D")
    if any(p.z is None for p in points):
        raise PromptError("a point on a volume needs its slice: Point(x, y, z=k)")
    previous = None if mask is None else _binary(mask, (depth, height, width), "the volume (Z, Y, X)")
    clipped = None
    if box is not None:
        if box.z1 < 0 or box.z0 > depth - 1:
            raise PromptError(f"3D box slices {box.z0}..{box.z1} lie outside the volume (0..{depth - 1})")
        plane = Box(box.x0, box.y0, box.x1, box.y1).clipped(height, width)
        clipped = Box3D(plane.x0, plane.y0, max(int(box.z0), 0), plane.x1, plane.y1, min(int(box.z1), depth - 1))
        outside = sorted({int(round(p.z)) for p in points if not clipped.z0 <= round(p.z) <= clipped.z1})
        if outside:
            raise PromptError(
                f"clicks on slices {outside} lie outside the 3D box's slices {clipped.z0}..{clipped.z1}, which the "
                "prompt cannot reach; widen the box or click inside its slices"
            )
    _needs_include(clipped, points, previous)
    engine = refine_engine(session)
    if not points and previous is None:
        result = engine.propagate(session._image_key, session._u8, clipped)
    else:
        result = engine.refine(session._image_key, session._u8, clipped, points, previous)
    return Prediction(
        mask=result.mask, timings=dict(result.timings), z_range=result.z_range, encoder_calls=result.encoder_calls,
        iou=result.iou, prompt={"box3d": clipped, "points": points, "mask": previous is not None},
        paused_by_block=result.paused,
    )
