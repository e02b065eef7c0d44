"""Voxel (IJK) <-> world (RAS) for volume nodes, honouring parent transforms.

Arrays from `arrayFromVolume` are indexed [k, j, i]; prompts use x = i, y = j, z = k.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import vtk
from slicer import util, vtkMRMLTransformNode

from FastMedSAMLib.errors import ImageError

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def ijk_to_local(volume) -> np.ndarray:
    """The volume's own IJK -> RAS (its parent frame, before parent transforms) as a 4x4 array."""
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return util.arrayFromVTKMatrix(matrix)


def parent_to_world(node) -> Optional[np.ndarray]:
    """4x4 from the node's parent frame to world, or None if a transform on the way is not linear."""
    matrix = vtk.vtkMatrix4x4()
    if not vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(node.GetParentTransformNode(), None, matrix):
        return None
    return util.arrayFromVTKMatrix(matrix)


def ijk_to_world(volume) -> np.ndarray:
    """4x4 IJK -> world RAS including linear parent transforms; ImageError for a non-linear (warping) transform."""
    to_world = parent_to_world(volume)
    if to_world is None:
        raise ImageError(
            f"volume {volume.GetName()!r} is under a non-linear transform: harden it (Transforms module) first"
        )
    return to_world @ ijk_to_local(volume)


def world_to_ijk(volume, points_world: np.ndarray) -> np.ndarray:
    """(N, 3) world RAS -> (N, 3) continuous IJK; works through any parent transform, linear or not."""
    world_to_parent = vtk.vtkGeneralTransform()
    vtkMRMLTransformNode.GetTransformBetweenNodes(None, volume.GetParentTransformNode(), world_to_parent)
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(ras_to_ijk)
    ras_to_ijk_np = util.arrayFromVTKMatrix(ras_to_ijk)
    points = np.atleast_2d(np.asarray(points_world, dtype=float))
    local = np.array([world_to_parent.TransformPoint(*p) for p in points])
    homogeneous = np.c_[local, np.ones(len(local))]
    return (homogeneous @ ras_to_ijk_np.T)[:, :3]


def ijk_to_segmentation(volume, segmentation) -> np.ndarray:
    """4x4 from the volume's IJK to the segmentation node's own frame (where its labelmaps live)."""
    between = vtk.vtkMatrix4x4()
    if not vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
        volume.GetParentTransformNode(), segmentation.GetParentTransformNode(), between
    ):
        raise ImageError(
            f"the transforms between volume {volume.GetName()!r} and segmentation {segmentation.GetName()!r} are "
            "not linear: harden them first"
        )
    return util.arrayFromVTKMatrix(between) @ ijk_to_local(volume)


def lps_geometry(ijk_to_ras: np.ndarray) -> Tuple[Tuple[float, float, float], Tuple[float, float, float], np.ndarray]:
    """(spacing xyz, origin LPS, 3x3 direction LPS) of an IJK -> RAS matrix: the ITK convention of the engine."""
    axes = ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ImageError(f"IJK -> RAS matrix has a zero spacing: {tuple(spacing)}")
    direction = LPS_FROM_RAS @ (axes / spacing)
    origin = LPS_FROM_RAS @ ijk_to_ras[:3, 3]
    return tuple(float(s) for s in spacing), tuple(float(o) for o in origin), direction
