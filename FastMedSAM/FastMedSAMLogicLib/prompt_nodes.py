"""Markups nodes -> voxel-space prompts of `FastMedSAMLib.prompts`.

Include / exclude points: fiducial nodes whose attribute `FastMedSAM.Role` is "include" (default) or "exclude".
Boxes: ROI nodes. An ROI edge at voxel edge i - 0.5 maps to the inclusive index i, so a box drawn around voxels
x0..x1 gives back exactly Box(x0, ..., x1); a flat ROI (drawn on one slice) covers the slice nearest its centre.
Every function takes an optional `frame` (a `ViewFrame`): the prompts are then given in that view's voxel grid, whose
slices are the planes of the view they were drawn in, instead of the volume's own grid.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np

from FastMedSAMLib.errors import PromptError
from FastMedSAMLib.prompts import Box, Box3D, Point

from .geometry import world_to_ijk

if TYPE_CHECKING:
    from .view_frame import ViewFrame

ROLE_ATTRIBUTE = "FastMedSAM.Role"
INCLUDE, EXCLUDE = "include", "exclude"
_EDGE_TOLERANCE = 1e-3  # voxels; absorbs round-off of edges placed exactly on voxel boundaries


def set_role(node, role: str) -> None:
    if role not in (INCLUDE, EXCLUDE):
        raise PromptError(f"prompt role must be {INCLUDE!r} or {EXCLUDE!r}, not {role!r}")
    node.SetAttribute(ROLE_ATTRIBUTE, role)


def role_of(node) -> str:
    return node.GetAttribute(ROLE_ATTRIBUTE) or INCLUDE


def is_roi(node) -> bool:
    return node.IsA("vtkMRMLMarkupsROINode")


def is_fiducial(node) -> bool:
    return node.IsA("vtkMRMLMarkupsFiducialNode")


def roi_complete(roi) -> bool:
    """True once an ROI is fully placed: every control point its placement needs is defined (an ROI drawn with two
    clicks is incomplete, and empty, after the first) and it spans a box (not a point)."""
    if not roi.GetControlPointPlacementComplete():
        return False
    size = [0.0, 0.0, 0.0]
    roi.GetSizeWorld(size)
    return sum(s > 0 for s in size) >= 2


def defined_points_world(node) -> np.ndarray:
    """(N, 3) world positions of the node's placed (defined) control points."""
    positions = [
        node.GetNthControlPointPositionWorld(i)
        for i in range(node.GetNumberOfControlPoints())
        if node.GetNthControlPointPositionStatus(i) == node.PositionDefined
    ]
    return np.array(positions, dtype=float).reshape(-1, 3)


def _to_index(volume, frame: Optional["ViewFrame"], points_world: np.ndarray) -> np.ndarray:
    return world_to_ijk(volume, points_world) if frame is None else frame.world_to_index(volume, points_world)


def points_from_nodes(volume, nodes: Sequence, frame: Optional["ViewFrame"] = None) -> List[Point]:
    """Every defined control point of the fiducial nodes, in voxel coordinates, labelled by its node's role."""
    points: List[Point] = []
    for node in nodes:
        if not is_fiducial(node):
            continue
        world = defined_points_world(node)
        if len(world) == 0:
            continue
        positive = role_of(node) == INCLUDE
        for i, j, k in _to_index(volume, frame, world):
            points.append(Point(float(i), float(j), float(k), positive=positive))
    return points


def _vector(getter) -> np.ndarray:
    out = [0.0, 0.0, 0.0]
    getter(out)
    return np.array(out)


def roi_corners_world(roi) -> np.ndarray:
    """The 8 corners of an (oriented) ROI in world RAS."""
    center = _vector(roi.GetCenterWorld)
    size = _vector(roi.GetSizeWorld)
    axes = [_vector(getter) for getter in (roi.GetXAxisWorld, roi.GetYAxisWorld, roi.GetZAxisWorld)]
    corners = []
    for sx in (-0.5, 0.5):
        for sy in (-0.5, 0.5):
            for sz in (-0.5, 0.5):
                corners.append(center + sx * size[0] * axes[0] + sy * size[1] * axes[1] + sz * size[2] * axes[2])
    return np.array(corners)


def _inclusive_range(lo: float, hi: float, centre: float) -> Tuple[int, int]:
    """Voxel indices whose centres lie inside [lo, hi]; the nearest one for a flat range."""
    first, last = math.ceil(lo - _EDGE_TOLERANCE), math.floor(hi + _EDGE_TOLERANCE)
    if first > last:
        first = last = int(round(centre))
    return first, last


def _edge_to_centre(lo: float, hi: float) -> Tuple[float, float]:
    """Box edges (voxel boundaries) -> inclusive voxel-centre coordinates; a box thinner than a voxel collapses
    to its centre."""
    first, last = lo + 0.5, hi - 0.5
    if first > last:
        first = last = (lo + hi) / 2.0
    return first, last


def roi_ijk_bounds(volume, roi, frame: Optional["ViewFrame"] = None) -> Tuple[np.ndarray, np.ndarray]:
    if roi.GetNumberOfControlPoints() == 0 or roi.GetNthControlPointPositionStatus(0) != roi.PositionDefined:
        raise PromptError(f"ROI {roi.GetName()!r} is not placed yet")
    ijk = _to_index(volume, frame, roi_corners_world(roi))
    return ijk.min(axis=0), ijk.max(axis=0)


def box3d_from_roi(volume, roi, frame: Optional["ViewFrame"] = None) -> Box3D:
    lo, hi = roi_ijk_bounds(volume, roi, frame)
    x0, x1 = _edge_to_centre(lo[0], hi[0])
    y0, y1 = _edge_to_centre(lo[1], hi[1])
    z0, z1 = _inclusive_range(lo[2], hi[2], (lo[2] + hi[2]) / 2.0)
    return Box3D(x0, y0, z0, x1, y1, z1)


def box_from_roi(volume, roi, slice_index: int, frame: Optional["ViewFrame"] = None) -> Box:
    """The ROI's in-plane box on slice `slice_index`; PromptError if the ROI does not reach that slice."""
    box = box3d_from_roi(volume, roi, frame)
    if not box.z0 <= slice_index <= box.z1:
        raise PromptError(
            f"ROI {roi.GetName()!r} covers slices {box.z0}..{box.z1}, not slice {slice_index}: "
            "draw the box on the current slice"
        )
    return box.slice_box(slice_index)


def points_on_slice(points: Sequence[Point], slice_index: int) -> List[Point]:
    """The points whose voxel lies on slice `slice_index`, snapped onto it."""
    return [
        Point(p.x, p.y, float(slice_index), positive=p.positive)
        for p in points
        if p.z is not None and int(round(p.z)) == slice_index
    ]
