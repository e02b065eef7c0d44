"""Exact conversions between voxel indices and world coordinates.

Index (i, j, k) is (column x, row y, slice z): `array[k, j, i]`. ITK files use LPS world coordinates, Slicer uses RAS;
the two differ by diag(-1, -1, 1). LPS = origin + direction · diag(spacing) · ijk, as ITK computes it. A 2D image
lies at k = 0. All functions take one point (3,) or many (N, 3) and compute in float64.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np

from ..errors import PromptError
from ..prompts import Box3D, Point
from .images import Image, ijk_to_lps_matrix, ijk_to_ras_matrix

ArrayLike = Union[np.ndarray, Sequence[float], Sequence[Sequence[float]]]
Vector3 = Tuple[float, float, float]
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
SPACES = ("lps", "ras")
# Corners this close (in voxels) to a voxel boundary count as on it, so float noise cannot add a slice.
BOUNDARY_TOLERANCE = 1e-6


def _points(values: ArrayLike) -> np.ndarray:
    points = np.asarray(values, dtype=np.float64)
    if points.shape[-1:] != (3,) or points.ndim > 2:
        raise ValueError(f"expected a point (3,) or points (N, 3), got shape {points.shape}")
    return points


def ras_to_ijk_matrix(image: Image) -> np.ndarray:
    return np.linalg.inv(ijk_to_ras_matrix(image))


def geometry_from_ijk_to_ras(matrix: ArrayLike) -> Tuple[Vector3, Vector3, np.ndarray]:
    """(spacing, origin, direction) in ITK's LPS terms from a Slicer IJKToRAS 4x4 (e.g. a volume node's), for
    `Image(array, spacing, origin, direction)` in that node's own voxel order."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(matrix, dtype=np.float64).reshape(4, 4)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    sx, sy, sz = (float(v) for v in spacing)
    ox, oy, oz = (float(v) for v in lps[:3, 3])
    return (sx, sy, sz), (ox, oy, oz), lps[:3, :3] / spacing


def lps_to_ras(points: ArrayLike) -> np.ndarray:
    return _points(points) @ LPS_TO_RAS


def ras_to_lps(points: ArrayLike) -> np.ndarray:
    return _points(points) @ LPS_TO_RAS


def index_to_lps(image: Image, ijk: ArrayLike) -> np.ndarray:
    """Continuous index (i, j, k) -> LPS mm (ITK's TransformContinuousIndexToPhysicalPoint)."""
    m = ijk_to_lps_matrix(image)
    return _points(ijk) @ m[:3, :3].T + m[:3, 3]


def lps_to_index(image: Image, lps: ArrayLike) -> np.ndarray:
    """LPS mm -> continuous index (i, j, k); round it for the voxel that contains the point."""
    m = ijk_to_lps_matrix(image)
    return (_points(lps) - m[:3, 3]) @ np.linalg.inv(m[:3, :3]).T


def index_to_ras(image: Image, ijk: ArrayLike) -> np.ndarray:
    return lps_to_ras(index_to_lps(image, ijk))


def ras_to_index(image: Image, ras: ArrayLike) -> np.ndarray:
    return lps_to_index(image, ras_to_lps(ras))


def world_to_index(image: Image, points: ArrayLike, space: str = "lps") -> np.ndarray:
    """World points in `space` ("lps" or "ras") -> continuous indices."""
    space = space.lower()
    if space not in SPACES:
        raise PromptError(f"unknown coordinate space {space!r}: use one of {', '.join(SPACES)}")
    return lps_to_index(image, points if space == "lps" else ras_to_lps(points))


def world_point_to_index(image: Image, point: ArrayLike, space: str = "lps", positive: bool = True) -> Point:
    """A world-space click -> a voxel-index `Point` (continuous; z None on a 2D image, which it must lie on)."""
    i, j, k = world_to_index(image, _points(point).reshape(3), space)
    if image.is_volume:
        return Point(float(i), float(j), float(k), positive=positive)
    if abs(k) > 0.5:
        raise PromptError(f"point {tuple(point)} ({space.upper()}) lies {abs(k):.2f} slices off the 2D image's plane")
    return Point(float(i), float(j), None, positive=positive)


def world_box_to_index(image: Image, corner_a: ArrayLike, corner_b: ArrayLike, space: str = "lps") -> Box3D:
    """A world-axis-aligned box given by two opposite corners -> the voxel-index box of the voxels it overlaps.

    All 8 corners go to index space (an oblique image turns the box); per axis the bounds are the voxels whose
    extent [n - 0.5, n + 0.5] overlaps the corners' index range by more than a boundary touch. A box with no
    thickness on an axis gets the one voxel containing it. Bounds are not clipped to the image (the Session does).
    """
    a, b = _points(corner_a).reshape(3), _points(corner_b).reshape(3)
    low, high = np.minimum(a, b), np.maximum(a, b)
    corners = np.array([[(low, high)[bit >> axis & 1][axis] for axis in range(3)] for bit in range(8)])
    ijk = world_to_index(image, corners, space)
    lo, hi = ijk.min(axis=0), ijk.max(axis=0)
    first = np.floor(lo + 0.5 + BOUNDARY_TOLERANCE)
    last = np.ceil(hi - 0.5 - BOUNDARY_TOLERANCE)
    thin = first > last
    first[thin] = last[thin] = np.floor((lo[thin] + hi[thin]) / 2 + 0.5)
    i0, j0, k0 = (int(v) for v in first)
    i1, j1, k1 = (int(v) for v in last)
    return Box3D(i0, j0, k0, i1, j1, k1)


__all__ = [
    "ijk_to_lps_matrix",
    "ijk_to_ras_matrix",
    "ras_to_ijk_matrix",
    "geometry_from_ijk_to_ras",
    "lps_to_ras",
    "ras_to_lps",
    "index_to_lps",
    "lps_to_index",
    "index_to_ras",
    "ras_to_index",
    "world_to_index",
    "world_point_to_index",
    "world_box_to_index",
]
