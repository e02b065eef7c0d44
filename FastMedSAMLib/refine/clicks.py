"""Where the next click goes, given a prediction and the ground truth (numpy, 2D or 3D).

`deepest_error_click` is the evaluation rule (RITM / CVPR 2025 interactive challenge): the error (prediction !=
truth) is split into connected components (8-connected in 2D, 26-connected in 3D), the largest is kept, and the
click goes to the maximum of its Euclidean distance transform (the point farthest from its border, first in
C order on ties); it is an include click where the object is. Training also draws clicks uniformly from the error."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy import ndimage

Click = Tuple[Tuple[int, ...], bool]  # (index in the array, positive)


def _largest_component(error: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(error, structure=np.ones((3,) * error.ndim, dtype=bool))
    if count == 1:
        return components == 1
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def deepest_error_click(prediction: np.ndarray, truth: np.ndarray) -> Optional[Click]:
    """The evaluation click; None when the prediction is already exact."""
    error = prediction != truth
    if not error.any():
        return None
    region = _largest_component(error)
    coords = np.nonzero(region)
    low = [int(c.min()) for c in coords]
    high = [int(c.max()) + 1 for c in coords]
    window = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    distance = ndimage.distance_transform_edt(np.pad(region[window], 1))[(slice(1, -1),) * region.ndim]
    local = np.unravel_index(int(np.argmax(distance)), distance.shape)
    index = tuple(int(lo + i) for lo, i in zip(low, local))
    return index, bool(truth[index])


def random_error_click(prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> Optional[Click]:
    """A click drawn uniformly from the error region (SAM's training rule)."""
    coords = np.nonzero(prediction != truth)
    if len(coords[0]) == 0:
        return None
    pick = int(rng.integers(len(coords[0])))
    index = tuple(int(c[pick]) for c in coords)
    return index, bool(truth[index])


def first_click(truth: np.ndarray, rng: np.random.Generator) -> Click:
    """A first include click inside the object: half the time anywhere in it, else where it is deep (EDT >= max/2)."""
    inside = truth
    if rng.random() < 0.5:
        distance = ndimage.distance_transform_edt(np.pad(truth, 1))[(slice(1, -1),) * truth.ndim]
        inside = distance >= distance.max() / 2
    coords = np.nonzero(inside)
    pick = int(rng.integers(len(coords[0])))
    return tuple(int(c[pick]) for c in coords), True
