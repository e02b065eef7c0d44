"""Which part of a re-decoded mask a click may change (FocalClick-style local refinement), in 2D and 3D.

The decoder re-predicts the whole object from the box, every click and the previous mask; left alone, that new
prediction also moves parts of the mask nobody pointed at, which is where clicks harm. So, per click (the numbers
are a `ClickRule`'s: `RULE_2D` for slices, `RULE_3D` for volumes):
* it must be obeyed: the clicked pixel (voxel) must end up on the click's side (inside for an include click,
  outside for an exclude click); a click the decoder does not follow changes nothing elsewhere, but still sets
  its own spot on its slice (so a click always does what it says where it lands, and the next click, at the
  deepest remaining error, lands somewhere new instead of on the same pixel): a disk of `follow` pixels, on a
  slice only as wide as the click is deep (`spot_depth`, at least `FOCUS_MIN_PX`: on small objects a shallow
  click's 3 px disk was most of what its harmful steps changed; in a volume one slice's spot is a sliver), and in
  2D the pixels within `spot_border` (width, reach) of the previous border (below), at most `spot_max_px` (a
  band of 1 × 13 px for a click 13 px deep removed 60 % of a validation EM cell: nothing but the click backs it);
* its edit stays in a focus window: a disk (a ball in voxels in 3D) around the click whose radius is `focus`
  times the click's depth, its distance to the previous mask's border (where the previous mask turns to the
  click's side), at least `FOCUS_MIN_PX`; the deepest point of an error region is as deep as the region is wide,
  so the window holds the error the click points at and not much more (`focus=inf`: no window). In 2D it also
  reaches along the previous border (`border` = (width, reach)): the pixels on the click's side within width ×
  depth of the previous mask's border and within reach × depth of the click. An error the evaluation clicks into
  is mostly a sliver along the border, longer than it is wide: on the training cases the decoder's change was
  right for 9 in 10 pixels that near the border up to 3 depths from the click and for more than half up to 12,
  but for 1 in 3 of those farther than one depth from the border (on volumes the band harmed: none there);
* an include click only adds to the mask, an exclude click only removes from it (a piece of change that grows the
  mask next to one that shrinks it is two edits, and the click asked for one);
* in 3D the window reaches `max_slices` slices up and down at most (on the training volumes, the changes a click
  kept 8–16 slices away were right for 58 % of the voxels, farther for 7 %), and a click changes only the voxels
  nearer to it than to any click of the other sign (`nearest_click`: an exclude click on a training kidney undid
  the right additions of the include click 8 voxels away, slice after slice);
* within the window, only the connected piece of that change that holds the click is kept (8-connected in 2D,
  26 in 3D).
The kept pieces (and spots) of all clicks are applied together, so the result does not depend on the clicks'
order (where an include and an exclude spot overlap, the exclude click wins)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..prompts import Point

FOCUS_MIN_PX = 2.0  # px: the smallest window (and spot) radius, for clicks 1-2 px deep
NO_BAND = (0.0, 0.0)


@dataclass(frozen=True)
class ClickRule:
    """How far a click's edit reaches (module documentation); lengths in click depths unless named px."""

    focus: float  # the window's radius around the click; inf: no window
    follow: float  # px: the largest spot a click the decoder does not obey still sets (0: none)
    spot_depth: float = float("inf")  # the spot's radius in click depths (FOCUS_MIN_PX to `follow` px); inf: `follow`
    border: Tuple[float, float] = NO_BAND  # (width, reach) of the window along the previous border
    spot_border: Tuple[float, float] = NO_BAND  # the same for the spot of a click not obeyed, each at most
    spot_max_px: float = 6.0  # px: nothing backs a spot but the click, so it stays small however deep the click
    max_slices: float = float("inf")  # 3D: how many slices up and down the window reaches at most
    nearest_click: bool = False  # a click changes only what lies nearer to it than to any click of the other sign


# tuned on the training cases of the split (refine/README.md): focus 1.0 / 1.5 / 2 / 3 in 2D, 2 / 3 /
# 4 / 6 / 8 in 3D; follow 2 / 3 / 5 px; border width 0.5 / 0.75 / 1 and reach 4 / 8 / 12 / 16 (on volumes: worse);
# spot border reach 1.5 / 2 / 3; max slices 4 / 8 / 12 / 16; nearest click on / off (in 2D: no better); smallest
# window 1.5 / 2 / 2.5 / 3 px, spot depth 1 / 1.5 / 2 (with 2 px; volumes: no change on the training side); with
# those, focus 1.25 / 2, border 0.75 x 8 and 0.5 x 12 (reach 8 before), follow 4
RULE_2D = ClickRule(focus=1.5, follow=3.0, spot_depth=1.0, border=(0.5, 12.0), spot_border=(1.0, 1.5))
RULE_3D = ClickRule(focus=3.0, follow=3.0, max_slices=12, nearest_click=True)


def _index(point: Point, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    coords = (point.z, point.y, point.x)[-len(shape):]
    return tuple(min(max(int(round(c)), 0), n - 1) for c, n in zip(coords, shape))


def _depth(plane: np.ndarray, yx: Tuple[int, int]) -> float:
    """Distance from pixel `yx` of the 2D mask `plane` to the nearest pixel of the other value (inf if none)."""
    same = plane == plane[yx]
    if same.all():
        return float("inf")
    return float(ndimage.distance_transform_edt(same)[yx])


def focus_window(previous: np.ndarray, point: Point, rule: ClickRule) -> Optional[np.ndarray]:
    """The pixels (voxels) the click may change, as a boolean array of `previous`'s shape; None: no limit."""
    index = _index(point, previous.shape)
    plane = previous[index[0]] if previous.ndim == 3 else previous
    depth = _depth(plane, index[-2:])
    radius = max(rule.focus * depth, FOCUS_MIN_PX)
    if not np.isfinite(radius):
        return None
    window = _ball(previous.shape, index, radius, rule.max_slices)
    width, reach = rule.border
    if width > 0 and reach > 0:
        window |= _border_band(previous, index, point.positive, width * max(depth, 1.0), reach * max(depth, 1.0))
    return window


def _ball(shape: Tuple[int, ...], index: Tuple[int, ...], radius: float, max_slices: float = float("inf")) -> np.ndarray:
    """A disk (2D) or a ball in voxels (3D) of `radius` around `index`. The ball is built slice by slice over the
    slices it reaches, so no (Z, H, W) array of distances is ever formed (a 3D click's reach narrows with the
    distance from its slice: as a cylinder through every slice it let one exclude click on the LA heart's top
    slices strip true voxels 40 slices away)."""
    if len(shape) == 2:
        return _plane_disk(shape, index, radius)
    window = np.zeros(shape, dtype=bool)
    distance2 = _plane_distance2(shape, index)
    reach = int(min(radius, max_slices))
    for z in range(max(0, index[0] - reach), min(shape[0], index[0] + reach + 1)):
        window[z] = distance2 <= radius**2 - (z - index[0]) ** 2
    return window


def _border_band(previous: np.ndarray, index: Tuple[int, ...], positive: bool, width: float, reach: float) -> np.ndarray:
    """The pixels (voxels) on the click's side of `previous` within `width` of its border and within `reach` of
    the click; the distances are computed on the box around the reach only."""
    pad = int(np.ceil(reach + width)) + 1
    box = tuple(slice(max(0, i - pad), min(n, i + pad + 1)) for i, n in zip(index, previous.shape))
    side = ~previous[box] if positive else previous[box]
    out = np.zeros(previous.shape, dtype=bool)
    if side.all():
        return out  # no border nearby
    local = tuple(i - b.start for i, b in zip(index, box))
    out[box] = (ndimage.distance_transform_edt(side) <= width) & side & _ball(side.shape, local, reach)
    return out


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


def _keep_nearer(region: np.ndarray, index: Tuple[int, ...], others: Sequence[Tuple[int, ...]]) -> None:
    """Clear, in place, the pixels (voxels) of `region` nearer (in pixels) to one of `others` than to `index`."""
    if not others:
        return
    coords = np.array(np.nonzero(region))
    own = ((coords - np.array(index)[:, None]) ** 2).sum(axis=0)
    nearest = np.min([((coords - np.array(o)[:, None]) ** 2).sum(axis=0) for o in others], axis=0)
    region[tuple(coords[:, own > nearest])] = False


def _spot_of(previous: np.ndarray, index: Tuple[int, ...], positive: bool, rule: ClickRule) -> np.ndarray:
    """The pixels a click the decoder does not obey sets to its side, on its own slice."""
    plane = previous[index[0]] if previous.ndim == 3 else previous
    width, reach = rule.spot_border
    banded = width > 0 and reach > 0
    # the click's depth (a distance transform of the slice) only where the spot's size depends on it
    depth = max(_depth(plane, index[-2:]), 1.0) if banded or np.isfinite(rule.spot_depth) else float("inf")
    spot = _spot(previous.shape, index, min(rule.follow, max(rule.spot_depth * depth, FOCUS_MIN_PX)))
    if banded and np.isfinite(depth):  # (no border on the slice: no band)
        cap = rule.spot_max_px
        spot[index[:-2]] |= _border_band(plane, index[-2:], positive, min(width * depth, cap), min(reach * depth, cap))
    return spot


def local_edit(previous: np.ndarray, refined: np.ndarray, points: Sequence[Point], rule: ClickRule = RULE_2D) -> np.ndarray:
    """`previous` with, for each click that `refined` obeys, the connected piece of the change on the click's side
    (added for an include click, removed for an exclude click) within its focus window that holds the click; and,
    for each click it does not obey whose pixel `previous` has wrong, its spot set to the click's side (`rule`:
    see the module documentation). 2D: (H, W) arrays indexed by the clicks' y, x; 3D: (Z, Y, X) arrays indexed by
    z, y, x."""
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
            if rule.follow > 0:  # not obeyed: the click still sets its own spot, and the next click lands elsewhere
                forced[point.positive] |= _spot_of(previous, index, point.positive, rule)
            continue
        window = focus_window(previous, point, rule)
        region = changed & (refined if point.positive else previous)  # include clicks add, exclude clicks remove
        if window is not None:
            region &= window
        if rule.nearest_click:
            _keep_nearer(region, index, [_index(q, changed.shape) for q in points if q.positive != point.positive])
        pieces, _ = ndimage.label(region, structure=structure)
        keep |= pieces == pieces[index]
    out[keep] = refined[keep]
    out[forced[True]] = True
    out[forced[False]] = False  # where an include and an exclude spot overlap, the exclude click wins
    return out
