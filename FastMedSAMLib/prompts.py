"""Prompt types. All coordinates are voxel indices (x = column i, y = row j, z = slice k), boxes inclusive.

World-space prompts (LPS / RAS) are converted to these with `FastMedSAMLib.io.geometry` before they reach a Session.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from .errors import PromptError


def _check_finite(name: str, values: Sequence[Optional[float]]) -> None:
    for v in values:
        if v is not None and not math.isfinite(v):
            raise PromptError(f"{name} has a non-finite coordinate: {tuple(values)}")


@dataclass(frozen=True)
class Box:
    """A 2D box on slice `z` (None for a 2D image): columns x0..x1, rows y0..y1, inclusive."""

    x0: float
    y0: float
    x1: float
    y1: float
    z: Optional[int] = None

    def __post_init__(self) -> None:
        _check_finite("Box", (self.x0, self.y0, self.x1, self.y1))
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise PromptError(
                f"Box is inverted: x0={self.x0}, x1={self.x1}, y0={self.y0}, y1={self.y1} (need x0 <= x1 and y0 <= y1)"
            )

    def clipped(self, height: int, width: int) -> "Box":
        """The box limited to the image; raises if it lies entirely outside or collapses to nothing."""
        if self.x1 < 0 or self.y1 < 0 or self.x0 > width - 1 or self.y0 > height - 1:
            raise PromptError(
                f"Box ({self.x0}, {self.y0}, {self.x1}, {self.y1}) lies outside the image of {width}x{height} pixels"
            )
        box = Box(max(self.x0, 0), max(self.y0, 0), min(self.x1, width - 1), min(self.y1, height - 1), self.z)
        if box.x1 - box.x0 < 1 and box.y1 - box.y0 < 1:
            raise PromptError(f"Box ({self.x0}, {self.y0}, {self.x1}, {self.y1}) is degenerate (a single pixel)")
        return box


@dataclass(frozen=True)
class Box3D:
    """A 3D box in voxel indices, inclusive on every axis."""

    x0: float
    y0: float
    z0: int
    x1: float
    y1: float
    z1: int

    def __post_init__(self) -> None:
        _check_finite("Box3D", (self.x0, self.y0, self.z0, self.x1, self.y1, self.z1))
        if self.x1 < self.x0 or self.y1 < self.y0 or self.z1 < self.z0:
            raise PromptError(f"Box3D is inverted: {self} (need x0 <= x1, y0 <= y1, z0 <= z1)")

    def slice_box(self, z: int) -> Box:
        return Box(self.x0, self.y0, self.x1, self.y1, z=z)


@dataclass(frozen=True)
class Point:
    """A click at voxel (x, y, z); `positive=False` marks an exclude point."""

    x: float
    y: float
    z: Optional[float] = None
    positive: bool = True

    def __post_init__(self) -> None:
        _check_finite("Point", (self.x, self.y, self.z))

    def check_inside(self, shape_zyx: Sequence[int]) -> None:
        depth, height, width = shape_zyx
        z = 0 if self.z is None else self.z
        if not (-0.5 <= self.x < width - 0.5 and -0.5 <= self.y < height - 0.5 and -0.5 <= z < depth - 0.5):
            raise PromptError(
                f"Point ({self.x}, {self.y}, {self.z}) lies outside the image (x < {width}, y < {height}, z < {depth})"
            )


def points_to_box(points: Sequence[Point], margin: float = 0.0) -> Box:
    """The tight box around the positive points (explicit conversion for box-only models)."""
    positives = [p for p in points if p.positive]
    if not positives:
        raise PromptError("Cannot convert points to a box: no positive point")
    zs = {None if p.z is None else int(round(p.z)) for p in positives}
    if len(zs) > 1:
        raise PromptError(f"Cannot convert points on different slices {sorted(z for z in zs if z is not None)} to one 2D box")
    xs = [p.x for p in positives]
    ys = [p.y for p in positives]
    return Box(min(xs) - margin, min(ys) - margin, max(xs) + margin, max(ys) + margin, z=zs.pop())
