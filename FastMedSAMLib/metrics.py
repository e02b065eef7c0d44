"""Overlap and boundary metrics of a predicted mask against ground truth.

DSC: 2|A∩B| / (|A| + |B|).
NSD (normalised surface distance at tolerance τ): the surfaces are the mask voxels that a 1-connectivity erosion
removes (voxels on the array edge count as surface); a surface voxel is "close" when the nearest surface voxel of
the other mask lies within τ (exact Euclidean distance in physical units via `distance_transform_edt` with
`sampling=spacing`); NSD = (close voxels of both surfaces) / (surface voxels of both).
Empty masks: both empty -> 1.0 (nothing to find, nothing found); exactly one empty -> 0.0, for DSC and NSD alike.

`spacing` is per array axis, in the order of `mask.shape` (so (sz, sy, sx) for a (Z, Y, X) volume).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

TOLERANCE_3D_MM = 2.0  # CVPR24 protocol for volumes with spacing
TOLERANCE_2D_PX = 1.0  # 2D sources carry no pixel spacing: tolerance in pixels


def _check_pair(prediction: np.ndarray, truth: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground truth shape {truth.shape}")
    return prediction, truth


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    prediction, truth = _check_pair(prediction, truth)
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, truth).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` with at least one face neighbour outside it (outside the array counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _joint_crop(prediction: np.ndarray, truth: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Both masks cut to their joint bounding box plus one empty voxel on every side.

    Distances between surface voxels do not depend on the rest of the array, and the zero padding reproduces the
    erosion's outside-is-background edge rule, so NSD is unchanged while the distance transforms get small."""
    coords = np.nonzero(prediction | truth)
    window = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    return np.pad(prediction[window], 1), np.pad(truth[window], 1)


def normalized_surface_distance(
    prediction: np.ndarray, truth: np.ndarray, tolerance: float, spacing: Optional[Sequence[float]] = None
) -> float:
    """NSD of `prediction` against `truth` at `tolerance` (same unit as `spacing`; pixels when spacing is None)."""
    prediction, truth = _check_pair(prediction, truth)
    if spacing is None:
        spacing = (1.0,) * truth.ndim
    if len(spacing) != truth.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {truth.ndim}-D mask")
    has_prediction, has_truth = bool(prediction.any()), bool(truth.any())
    if not (has_prediction or has_truth):
        return 1.0
    if not (has_prediction and has_truth):
        return 0.0
    prediction, truth = _joint_crop(prediction, truth)
    surface_prediction, surface_truth = surface(prediction), surface(truth)
    to_truth = ndimage.distance_transform_edt(~surface_truth, sampling=spacing)
    to_prediction = ndimage.distance_transform_edt(~surface_prediction, sampling=spacing)
    close = int((to_truth[surface_prediction] <= tolerance).sum()) + int((to_prediction[surface_truth] <= tolerance).sum())
    return close / (int(surface_prediction.sum()) + int(surface_truth.sum()))


def score(prediction: np.ndarray, truth: np.ndarray, spacing: Optional[Sequence[float]] = None) -> Tuple[float, float]:
    """(DSC, NSD) with the protocol's tolerance: 2 mm when `spacing` (mm) is given, else 1 px."""
    tolerance = TOLERANCE_3D_MM if spacing is not None else TOLERANCE_2D_PX
    return dice(prediction, truth), normalized_surface_distance(prediction, truth, tolerance, spacing)
