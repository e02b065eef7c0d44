"""Bench workload of the 3D point models (FastSAM3D, SAM-Med3D-turbo) for `bench.WORKLOADS`.

Same measurement names as the 2D box workload, so the bench tables line up: `encode_cold` is one 128³ crop encoded
with the cache cleared (preprocess = resampling to 1.5 mm + z-score; decode = the first click's round), and
`click_cached` a second click on the same crop (encoder skipped; decode = one prompt-encoder + decoder round,
postprocess = trilinear upsampling and the paste-back onto the original grid). The volume is the bench's first
DeepLesion CT; the clicks sit at the centre of its lesion box.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from ..prompts import Point
from .bench_data import BenchData

Figures = Dict[str, float]
SECOND_CLICK_OFFSET = (4.0, -3.0, 0.0)  # voxels (x, y, z) from the first click: same crop, decoder only


def _clicks(data: BenchData) -> Tuple[Any, Point, Point]:
    _, volume, box = data.volumes[0]
    first = Point((box.x0 + box.x1) / 2.0, (box.y0 + box.y1) / 2.0, float((box.z0 + box.z1) // 2))
    dx, dy, dz = SECOND_CLICK_OFFSET
    return volume, first, Point(first.x + dx, first.y + dy, first.z + dz)  # type: ignore[operator]


def _figures(prediction: Any, stages: Sequence[str]) -> Figures:
    figures = {f"{stage}_ms": float(prediction.timings.get(stage, 0.0)) for stage in stages}
    figures["encoder_calls"] = float(prediction.encoder_calls)
    return figures


def encode_cold(session: Any, data: BenchData) -> Figures:
    """One click on a fresh crop: resample + z-score, encoder, one round, paste-back."""
    volume, first, _ = _clicks(data)
    session.set_image(volume)
    session.clear_cache()
    prediction = session.predict(points=[first])  # after click_cached's two clicks: a fresh one-round replay
    return _figures(prediction, ("preprocess", "encode", "decode", "postprocess", "total"))


def click_cached(session: Any, data: BenchData) -> Figures:
    """A second click on the same crop: the cached embedding, one prompt-encoder + decoder round."""
    volume, first, second = _clicks(data)
    session.set_image(volume)
    prediction = session.predict(points=[first, second])
    return _figures(prediction, ("encode", "decode", "postprocess", "total"))


POINT_3D: List[Tuple[str, Any]] = [("encode_cold", encode_cold), ("click_cached", click_cached)]
# registry family -> workload, to merge into bench.WORKLOADS
WORKLOADS_3D: Dict[str, List[Tuple[str, Any]]] = {"fastsam3d": POINT_3D, "sam-med3d": POINT_3D}
