"""The voxel grid the model sees for a prompt drawn in a slice view: its slices are that view's planes.

The engine segments 2D slices along its image's K axis. A box drawn in the Yellow (sagittal), Green (coronal) or an
oblique view lies in another plane, so the Logic hands the engine the volume in a *view frame*:
- the view's normal is along a volume axis (any view showing the volume's own slices): the array is transposed and
  flipped so that the view's plane becomes the K plane; mapping the mask back is the exact inverse permutation;
- otherwise (oblique): the volume, brought to the model's uint8 by the engine's intensity rule, is resampled
  (trilinear) onto a grid whose axes are the view's screen X, screen
  down and normal, with one grid plane through the view's plane; the mask comes back by nearest-neighbour lookup of
  every volume voxel centre in that grid.
Frame axes: i' = the view's screen X, j' = screen down (image rows), k' = the view's normal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from FastMedSAMLib.errors import ImageError

from .geometry import ijk_to_local, parent_to_world, world_to_ijk
from .segment_io import Region

ALIGNED_TOLERANCE = 1e-5  # 1 - |cos| between the view normal and a volume axis that still counts as aligned


@dataclass(frozen=True)
class ViewFrame:
    """A voxel grid of the volume whose K planes are one slice view's planes."""

    index_to_ijk: np.ndarray  # 4x4: frame index (i', j', k') -> continuous volume index (i, j, k)
    shape: Tuple[int, int, int]  # (K', J', I') of the frame array
    volume_shape: Tuple[int, int, int]  # (K, J, I) of the volume
    axes: Optional[Tuple[Tuple[int, int, int], Tuple[bool, bool, bool]]]  # aligned: volume axis and flip per frame axis

    @property
    def aligned(self) -> bool:
        return self.axes is not None

    @property
    def is_identity(self) -> bool:
        return self.axes == ((0, 1, 2), (False, False, False))

    @property
    def key(self) -> tuple:
        return (self.shape, tuple(np.round(self.index_to_ijk, 9).ravel()))

    def ijk_to_index(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) volume indices -> (N, 3) frame indices."""
        inverse = np.linalg.inv(self.index_to_ijk)
        points = np.atleast_2d(np.asarray(ijk, dtype=float))
        return (np.c_[points, np.ones(len(points))] @ inverse.T)[:, :3]

    def world_to_index(self, volume, points_world: np.ndarray) -> np.ndarray:
        """(N, 3) world RAS -> (N, 3) continuous frame indices (through the volume's parent transforms)."""
        return self.ijk_to_index(world_to_ijk(volume, points_world))

    def index_to_local(self, volume) -> np.ndarray:
        """4x4 frame index -> the volume's parent frame (RAS): the frame's geometry for the engine."""
        return ijk_to_local(volume) @ self.index_to_ijk

    # -- volume -> frame ---------------------------------------------------------------------------------------
    def image(self, array_kji: np.ndarray, planes: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """The volume's (K, J, I[, C]) array in the frame, (K', J', I'[, C]). Oblique frames: only `planes`
        (k0, k1 inclusive; None = all) are resampled, the others stay 0."""
        if self.axes is not None:
            return np.ascontiguousarray(_permute(array_kji, *self.axes))
        # the engine's intensity rule on the whole volume first, so the resampled planes (and the empty corners
        # around the rotated volume) get exactly the contrast the volume's own slices get
        from FastMedSAMLib.io.images import Image
        from FastMedSAMLib.io.intensity import to_uint8

        u8 = to_uint8(Image.from_array(np.asarray(array_kji)))
        return np.clip(np.rint(_resample(u8, self.index_to_ijk, self.shape, planes)), 0, 255).astype(np.uint8)

    # -- frame -> volume ---------------------------------------------------------------------------------------
    def to_volume(self, region: Region, mask: np.ndarray) -> Tuple[Region, np.ndarray, np.ndarray]:
        """A frame region and its mask -> (volume region, mask there, covered there): `covered` marks the volume
        voxels the frame region rewrites (all of them when aligned); the others keep their value."""
        if self.axes is not None:
            volume_region = self._aligned_region(region)
            back = _unpermute(mask, *self.axes)
            return volume_region, back, np.ones(back.shape, dtype=bool)
        return self._oblique_to_volume(region, mask)

    def _aligned_region(self, region: Region) -> Region:
        source, flips = self.axes
        lows = [region.i0, region.j0, region.k0]  # frame x, y, z
        highs = [region.i1, region.j1, region.k1]
        sizes = self.volume_shape[::-1]  # volume (I, J, K)
        bounds = [(0, 0)] * 3
        for axis in range(3):
            lo, hi, n = lows[axis], highs[axis], sizes[source[axis]]
            bounds[source[axis]] = (n - 1 - hi, n - 1 - lo) if flips[axis] else (lo, hi)
        (i0, i1), (j0, j1), (k0, k1) = bounds
        return Region(k0, k1, j0, j1, i0, i1)

    def _oblique_to_volume(self, region: Region, mask: np.ndarray) -> Tuple[Region, np.ndarray, np.ndarray]:
        corners = np.array([[i, j, k] for i in (region.i0 - 0.5, region.i1 + 0.5)
                            for j in (region.j0 - 0.5, region.j1 + 0.5) for k in (region.k0 - 0.5, region.k1 + 0.5)])
        ijk = (np.c_[corners, np.ones(8)] @ self.index_to_ijk.T)[:, :3]
        lo, hi = np.floor(ijk.min(axis=0)).astype(int), np.ceil(ijk.max(axis=0)).astype(int)
        volume_region = Region(lo[2], hi[2], lo[1], hi[1], lo[0], hi[0]).clipped(self.volume_shape)
        ks, js, is_ = np.meshgrid(*(np.arange(a, b + 1) for a, b in (
            (volume_region.k0, volume_region.k1), (volume_region.j0, volume_region.j1),
            (volume_region.i0, volume_region.i1))), indexing="ij")
        index = np.floor(self.ijk_to_index(np.c_[is_.ravel(), js.ravel(), ks.ravel()]) + 0.5).astype(int)
        local = index - np.array([region.i0, region.j0, region.k0])
        shape_xyz = np.array(region.shape[::-1])
        covered = np.all((local >= 0) & (local < shape_xyz), axis=1)
        values = np.zeros(len(local), dtype=bool)
        inside = local[covered]
        values[covered] = mask[inside[:, 2], inside[:, 1], inside[:, 0]]
        return volume_region, values.reshape(volume_region.shape), covered.reshape(volume_region.shape)


def _permute(array_kji: np.ndarray, source: Tuple[int, int, int], flips: Tuple[bool, bool, bool]) -> np.ndarray:
    """Volume (K, J, I) -> frame (K', J', I'): frame axis d (x, y, z) reads volume axis source[d], reversed if flipped."""
    xyz = np.swapaxes(array_kji, 0, 2)  # (I, J, K[, C])
    moved = np.moveaxis(xyz, list(source), [0, 1, 2])
    for axis, flip in enumerate(flips):
        if flip:
            moved = np.flip(moved, axis=axis)
    return np.swapaxes(moved, 0, 2)


def _unpermute(array_kji: np.ndarray, source: Tuple[int, int, int], flips: Tuple[bool, bool, bool]) -> np.ndarray:
    """The inverse of `_permute` (works on any sub-block: a flipped range maps onto the reversed range)."""
    xyz = np.swapaxes(array_kji, 0, 2)
    for axis, flip in enumerate(flips):
        if flip:
            xyz = np.flip(xyz, axis=axis)
    moved = np.moveaxis(xyz, [0, 1, 2], list(source))
    return np.ascontiguousarray(np.swapaxes(moved, 0, 2))


def _resample(array_kji: np.ndarray, index_to_ijk: np.ndarray, shape: Tuple[int, int, int],
              planes: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Trilinear resampling of the volume on the frame grid, plane by plane (only `planes` when given, the others
    0); outside the volume: 0."""
    from scipy.ndimage import map_coordinates

    depth, height, width = shape
    js, is_ = np.meshgrid(np.arange(height, dtype=float), np.arange(width, dtype=float), indexing="ij")
    channels = array_kji.shape[3:]
    out = np.zeros(shape + channels, dtype=np.float32)
    first, last = (0, depth - 1) if planes is None else planes
    for k in range(max(first, 0), min(last, depth - 1) + 1):
        plane = np.c_[is_.ravel(), js.ravel(), np.full(is_.size, float(k)), np.ones(is_.size)] @ index_to_ijk.T
        coordinates = [plane[:, 2], plane[:, 1], plane[:, 0]]
        if channels:
            for c in range(channels[0]):
                out[k, ..., c] = map_coordinates(array_kji[..., c], coordinates, order=1, cval=0.0).reshape(height, width)
        else:
            out[k] = map_coordinates(array_kji, coordinates, order=1, cval=0.0).reshape(height, width)
    return out


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def view_frame(volume, slice_to_ras) -> ViewFrame:
    """The frame of the slice view whose SliceToRAS (4x4 array or vtkMatrix4x4, world RAS) is given.

    ImageError when the volume is under a non-linear transform: the view's planes have no exact image in its grid."""
    matrix = _as_array(slice_to_ras)
    image = volume.GetImageData()
    if image is None:
        raise ImageError(f"volume {volume.GetName()!r} has no image data")
    dims = image.GetDimensions()
    volume_shape = (dims[2], dims[1], dims[0])
    to_world = parent_to_world(volume)
    if to_world is None:
        raise ImageError(f"volume {volume.GetName()!r} is under a non-linear transform: harden it (Transforms module) "
                         "before prompting in a slice view")
    ijk_to_world = to_world @ ijk_to_local(volume)
    world_to_ijk_linear = np.linalg.inv(ijk_to_world)
    # the view's screen X, screen down and normal, as directions in voxel-index space
    screen = [matrix[:3, 0], -matrix[:3, 1], matrix[:3, 2]]
    in_ijk = [world_to_ijk_linear[:3, :3] @ _unit(np.asarray(v, dtype=float)) for v in screen]
    axes_unit = _unit_axes(ijk_to_world)
    # cosines with the volume's (physical) axes decide alignment; index-space vectors are scaled by spacing
    cosines = [np.array([np.dot(_unit(np.asarray(v, dtype=float)), axes_unit[:, a]) for a in range(3)]) for v in screen]
    normal_axis = int(np.argmax(np.abs(cosines[2])))
    if 1.0 - abs(cosines[2][normal_axis]) <= ALIGNED_TOLERANCE:
        rest = [a for a in range(3) if a != normal_axis]
        x_axis = max(rest, key=lambda a: abs(cosines[0][a]))
        y_axis = next(a for a in rest if a != x_axis)
        source = (x_axis, y_axis, normal_axis)
        flips = tuple(bool(cosines[d][source[d]] < 0) for d in range(3))
        sizes = volume_shape[::-1]
        index_to_ijk = np.zeros((4, 4))
        index_to_ijk[3, 3] = 1.0
        for d in range(3):
            index_to_ijk[source[d], d] = -1.0 if flips[d] else 1.0
            index_to_ijk[source[d], 3] = sizes[source[d]] - 1 if flips[d] else 0.0
        shape_xyz = [sizes[source[d]] for d in range(3)]
        return ViewFrame(index_to_ijk, (shape_xyz[2], shape_xyz[1], shape_xyz[0]), volume_shape, (source, flips))
    # oblique: grid steps along each view axis as fine as the volume's own sampling in that direction
    steps = [1.0 / np.linalg.norm(v) for v in in_ijk]  # mm per frame voxel
    units_world = [_unit(np.asarray(v, dtype=float)) for v in screen]
    origin_world = matrix[:3, 3]
    sizes = np.array(volume_shape[::-1], dtype=float)
    corners = np.array([[i, j, k] for i in (0, sizes[0] - 1) for j in (0, sizes[1] - 1) for k in (0, sizes[2] - 1)])
    corners_world = (np.c_[corners, np.ones(8)] @ ijk_to_world.T)[:, :3]
    lows, counts = [], []
    for unit, step in zip(units_world, steps):
        t = (corners_world - origin_world) @ unit / step
        lo, hi = math.floor(t.min() + 1e-6), math.ceil(t.max() - 1e-6)
        lows.append(lo)
        counts.append(hi - lo + 1)
    index_to_world = np.eye(4)
    for d in range(3):
        index_to_world[:3, d] = units_world[d] * steps[d]
    index_to_world[:3, 3] = origin_world + sum(lows[d] * steps[d] * units_world[d] for d in range(3))
    index_to_ijk = world_to_ijk_linear @ index_to_world
    return ViewFrame(index_to_ijk, (counts[2], counts[1], counts[0]), volume_shape, None)


def volume_frame(volume) -> ViewFrame:
    """The volume's own grid (slices along K): what a prompt without a view uses."""
    dims = volume.GetImageData().GetDimensions()
    shape = (dims[2], dims[1], dims[0])
    return ViewFrame(np.eye(4), shape, shape, ((0, 1, 2), (False, False, False)))


def view_slice_index(frame: ViewFrame, volume, slice_to_ras) -> int:
    """The frame slice the view shows (its plane's position along the normal, to the nearest slice)."""
    origin = _as_array(slice_to_ras)[:3, 3]
    return int(round(float(frame.world_to_index(volume, origin[None])[0][2])))


def _unit_axes(ijk_to_world: np.ndarray) -> np.ndarray:
    axes = ijk_to_world[:3, :3]
    return axes / np.linalg.norm(axes, axis=0)


def _as_array(matrix) -> np.ndarray:
    if hasattr(matrix, "GetElement"):
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    array = np.asarray(matrix, dtype=float)
    if array.shape != (4, 4):
        raise ImageError(f"a slice view's SliceToRAS is a 4x4 matrix, not {array.shape}")
    return array


def plane_step_mm(frame: ViewFrame, volume) -> float:
    """Distance in mm between two planes of the frame (along the view's normal)."""
    to_world = parent_to_world(volume)
    matrix = frame.index_to_local(volume) if to_world is None else to_world @ frame.index_to_local(volume)
    return float(np.linalg.norm(matrix[:3, 2]))


def view_containing(points_world: np.ndarray, views: Sequence[Tuple[str, object]], preferred: Optional[str] = None,
                    tolerance_mm: float = 0.01) -> Optional[str]:
    """The name of the slice view whose plane holds every point (Slicer places markups exactly on the plane of the
    view clicked in); `preferred` (the view under the pointer, or the last one used) wins a tie. None if no view
    holds them all. `views`: (name, SliceToRAS) pairs."""
    points = np.atleast_2d(np.asarray(points_world, dtype=float))
    if points.size == 0:
        return None
    holding = []
    for name, slice_to_ras in views:
        matrix = _as_array(slice_to_ras)
        normal = _unit(matrix[:3, 2])
        if np.all(np.abs((points - matrix[:3, 3]) @ normal) <= tolerance_mm):
            holding.append(name)
    if preferred in holding:
        return preferred
    return holding[0] if holding else None
