"""Which part of a re-decoded mask a click may change (FocalClick-style local refinement), in 2D and 3D.

The decoder re-predicts the whole object from the box, every click and the previous mask; left alone, that new
prediction also moves parts of the mask nobody pointed at, which is where clicks harm. So, per click:
* it must be obeyed: the clicked pixel (voxel) must end up on the click's side (inside for an include click,
  outside for an exclude click); a click the decoder does not follow changes nothing elsewhere, but still sets
  its own spot, a disk of `follow` pixels on its slice (`FOLLOW_PX`; so a click always does what it says where it lands,
  and the next click, at the deepest remaining error, lands somewhere new instead of on the same pixel);
* its edit stays in a focus window: a disk (a ball in voxels in 3D) around the click whose radius is
  `focus` times the click's depth, its distance to the previous mask's border (where the previous mask turns to
  the click's side), at least `FOCUS_MIN_PX` (`FOCUS` in 2D, `FOCUS_3D` in 3D); the deepest point of an error
  region is as deep as the region is wide, so the window holds the error the click points at and not much more.
  `focus=inf` switches it off;
* an include click only adds to the mask, an exclude click only removes from it (a piece of change that grows the
  mask next to one that shrinks it is two edits, and the click asked for one);
* within the window, only the connected piece of that change that holds the click is kept (8-connected in 2D,
  26 in 3D).
The kept pieces (and spots) of all clicks are applied together, so the result does not depend on the clicks'
order (where an include and an exclude spot overlap, the exclude click wins)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..prompts import Point

# tuned on the training cases of the split (README, *Refinement by clicking*): 2D slices, 3D volumes
FOCUS = 1.5
FOCUS_3D = 3.0
FOCUS_MIN_PX = 3.0
FOLLOW_PX = 3.0  # tuned on the training cases too (2, 3, 5 px)


def _index(point: Point, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    coords = (point.z, point.y, point.x)[-len(shape):]
    return tuple(min(max(int(round(c)), 0), n - 1) for c, n in zip(coords, shape))


def _depth(plane: np.ndarray, yx: Tuple[int, int]) -> float:
    """Distance from pixel `yx` of the 2D mask `plane` to the nearest pixel of the other value (inf if none)."""
    same = plane == plane[yx]
    if same.all():
        return float("inf")
    return float(ndimage.distance_transform_edt(same)[yx])


def focus_window(previous: np.ndarray, point: Point, focus: float) -> Optional[np.ndarray]:
    """The pixels (voxels) the click may change, as a boolean array of `previous`'s shape; None: no limit."""
    index = _index(point, previous.shape)
    plane = previous[index[0]] if previous.ndim == 3 else previous
    radius = max(focus * _depth(plane, index[-2:]), FOCUS_MIN_PX)
    if not np.isfinite(radius):
        return None
    if previous.ndim == 2:
        return _plane_disk(previous.shape, index, radius)
    # a ball in voxels: the click's reach narrows with the distance from its slice (as a cylinder through every
    # slice it let one exclude click on the LA heart's top slices strip true voxels 40 slices away); built slice by
    # slice over the slices it reaches, so no (Z, H, W) array of distances is ever formed
    window = np.zeros(previous.shape, dtype=bool)
    distance2 = _plane_distance2(previous.shape, index)
    reach = int(radius)
    for z in range(max(0, index[0] - reach), min(previous.shape[0], index[0] + reach + 1)):
        window[z] = distance2 <= radius**2 - (z - index[0]) ** 2
    return window


def _plane_distance2(shape: Tuple[int, ...], index: Tuple[int, ...]) -> np.ndarray:
    """(H, W) squared in-plane distances to `index`'s last two coordinates."""
    h, w = shape[-2:]
    yy, xx = np.ogrid[:h, :w]
    return (yy - index[-2]) ** 2 + (xx - index[-1]) ** 2


def _plane_disk(shape: Tuple[int, ...], index: Tuple[int, ...], radius: float) -> np.ndarray:
    """(H, W) bool: the disk of `radius` pixels around `index`'s last two coordinates."""
    return _plane_distance2(shape, index) <= radius**2


def _spot(shape: Tuple[int, ...], index: Tuple[int, ...], radius: float) -> np.ndarray:
    """A disk of `radius` pixels around `index` on its own slice only (the whole array when 2D)."""
    out = np.zeros(shape, dtype=bool)
    out[index[:-2]] = _plane_disk(shape, index, radius)
    return out


def local_edit(previous: np.ndarray, refined: np.ndarray, points: Sequence[Point],
               focus: float = FOCUS, follow: float = FOLLOW_PX) -> np.ndarray:
    """`previous` with, for each click that `refined` obeys, the connected piece of the change on the click's side
    (added for an include click, removed for an exclude click) within its focus window that holds the click; and,
    for each click it does not obey whose pixel `previous` has wrong, a disk of `follow` pixels around the click on
    its slice set to the click's side (0: none). 2D: (H, W) arrays indexed by the clicks' y, x; 3D: (Z, Y, X)
    arrays indexed by z, y, x."""
    changed = refined != previous
    out = previous.copy()
    structure = np.ones((3,) * changed.ndim, dtype=bool)
    keep = np.zeros_like(changed)
    forced = {True: np.zeros_like(changed), False: np.zeros_like(changed)}
    for point in points:
        index = _index(point, changed.shape)
        if bool(previous[index]) == point.positive:
            continue  # its pixel was right already (the decoder may not take it back)
        if bool(refined[index]) != point.positive:
            if follow > 0:  # not obeyed: the click still sets its own spot, and the next click lands elsewhere
                forced[point.positive] |= _spot(changed.shape, index, follow)
            continue
        window = focus_window(previous, point, focus)
        region = changed & (refined if point.positive else previous)  # include clicks add, exclude clicks remove
        if window is not None:
            region &= window
        pieces, _ = ndimage.label(region, structure=structure)
        keep |= pieces == pieces[index]
    out[keep] = refined[keep]
    out[forced[True]] = True
    out[forced[False]] = False  # where an include and an exclude disk overlap, the exclude click wins
    return out
