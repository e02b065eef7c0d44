"""Point prompts on 128³ crops (FastSAM3D, SAM-Med3D-turbo): the SAM-Med3D validation preprocessing, encoding once
per crop, one prompt-encoder + decoder round per click, and the exact paste-back onto the original voxel grid.

Geometry (RECIPE.md §6, reproduced in physical space with SimpleITK):
* the image is resampled to 1.5 mm isotropic on torchio's `Resample(1.5)` grid (same direction; first voxel centred
  at continuous index 0.5·(1.5/spacing − 1), so the first voxel's outer edge stays put; ceil(n·spacing/1.5) voxels)
  and reoriented to RAS+ like `ToCanonical` (a signed permutation of the axes: nothing is interpolated twice).
  This is `CanonicalGrid`. Model tensors are in torchio's axis order: (d, h, w) = canonical (i, j, k), so d runs
  to the patient's right, h anterior, w superior;
* a crop is a 128³ window of that grid; voxels outside the image are 0 (torchio pads with 0). Only the window is
  ever resampled (linear), which equals resampling the whole grid and cropping;
* intensities are the raw ones (HU for CT, no window, no clamp: FastSAM3D's loader), then z-scored with the mean
  and std (n−1, as torch.std) of the crop's voxels > 0 (torchio `ZNormalization(masking_method=x > 0)`); a crop
  with fewer than two such voxels, or no spread among them, is z-scored over all its voxels instead;
* the 32³ low-res logits are upsampled trilinearly (align_corners=False) to 128³; those crop-grid logits are
  resampled linearly onto the original grid (ITK, the crop's exact geometry) and thresholded at 0 (sigmoid > 0.5),
  only where the original voxel centres lie inside the crop. Elsewhere the previous mask (or nothing) stays.

Clicks and crops in the Session (`CropEngine.segment`):
* the crop is the one of the last call while it still contains every click (and the previous mask's bounding box,
  when given and when it fits together with the clicks); otherwise a new crop is centred on them with torchio's
  `CropOrPad` rounding. Clicks that no 128³ crop (192 mm) can hold raise a PromptError;
* each click is one round: the prompt encoder gets that click only and the previous round's 32³ logits as the mask
  prompt (the first round an all-zero mask), as the validation protocol does. A call whose click list extends the
  last call's list on the same image and crop runs only the new clicks; any other list, or any call that had to
  encode the crop (first use, cache eviction, `clear_cache`), is replayed click by click from an empty mask prompt.
  Both give the same result, so a prediction depends only on the image, the crop and the ordered clicks. The
  user's previous mask never enters the model (it was trained on its own logits only)."""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Hashable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..api import STAGES
from ..errors import ImageError, PromptError
from ..io.geometry import index_to_lps, lps_to_index
from ..io.images import Image
from ..models.base import SamModel
from ..prompts import Point
from ..runtime.device import synchronize
from ..timing import ms_since
from .cache import EmbeddingCache
from .slice_engine import VolumeResult

CROP = 128
SPACING_MM = 1.5
LOW_RES = 32
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
Triple = Tuple[int, int, int]


def to_sitk(
    array_zyx: np.ndarray, origin: Sequence[float], spacing: Sequence[float], direction: np.ndarray
) -> sitk.Image:
    """A SimpleITK image from a (Z, Y, X) array and ITK geometry (direction columns = axis directions)."""
    if array_zyx.dtype == bool:
        array_zyx = array_zyx.astype(np.uint8)
    image = sitk.GetImageFromArray(array_zyx)
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetDirection(np.asarray(direction, dtype=np.float64).ravel().tolist())
    return image


def image_to_sitk(image: Image) -> sitk.Image:
    if not image.is_volume:
        raise ImageError("3D point models need a volume; this image is 2D")
    return to_sitk(image.array, image.origin, image.spacing, image.direction)


def canonical_axes(direction: np.ndarray) -> Tuple[Triple, Triple]:
    """(source axis, sign) for each RAS+ axis: the signed axis permutation that `ToCanonical` applies."""
    ras = LPS_TO_RAS @ np.asarray(direction, dtype=np.float64)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(ras[r, p[r]]) for r in range(3)))
    signs = tuple(1 if ras[r, best[r]] >= 0 else -1 for r in range(3))
    return best, signs  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class CanonicalGrid:
    """The image's 1.5 mm RAS+ grid: voxel (i, j, k) is at origin + direction · 1.5 · (i, j, k) (LPS)."""

    origin: Tuple[float, float, float]
    direction: np.ndarray  # 3x3, columns = axis directions (LPS)
    size: Triple  # voxels along i, j, k

    @classmethod
    def of(cls, image: Image) -> "CanonicalGrid":
        spacing = np.asarray(image.spacing, dtype=np.float64)
        old_size = np.asarray(image.shape_zyx[::-1], dtype=np.float64)
        # torchio Resample(1.5): same float expression, so the same voxel count
        size = np.ceil(old_size * spacing / SPACING_MM).astype(int)
        first = index_to_lps(image, 0.5 * (SPACING_MM / spacing - 1))
        axes, signs = canonical_axes(image.direction)
        corner = np.array([0.0 if signs[r] > 0 else size[axes[r]] - 1 for r in range(3)])
        permuted = np.zeros(3)
        permuted[list(axes)] = corner
        origin = first + image.direction @ (SPACING_MM * permuted)
        direction = np.stack([image.direction[:, axes[r]] * signs[r] for r in range(3)], axis=1)
        canonical_size = tuple(int(size[a]) for a in axes)
        return cls(tuple(float(v) for v in origin), direction, canonical_size)  # type: ignore[arg-type]

    def to_index(self, lps: np.ndarray) -> np.ndarray:
        """LPS (N, 3) -> continuous grid indices (N, 3)."""
        return (np.atleast_2d(lps) - np.asarray(self.origin)) @ np.linalg.inv(self.direction * SPACING_MM).T

    def to_lps(self, index: np.ndarray) -> np.ndarray:
        return np.atleast_2d(index) @ (self.direction * SPACING_MM).T + np.asarray(self.origin)

    def reference(self) -> sitk.Image:
        """An empty SimpleITK image on the whole grid (for resampling labels onto it)."""
        return _empty(self.size, self.origin, self.direction)

    def crop(self, start: Sequence[int]) -> "Crop":
        return Crop(self, tuple(int(v) for v in start))  # type: ignore[arg-type]

    def crop_around(self, low: Sequence[int], high: Sequence[int]) -> "Crop":
        """The 128³ window centred on voxels low..high (inclusive) with torchio `CropOrPad(mask_name=...)` rounding."""
        return self.crop([(int(lo) + int(hi) + 1) // 2 - CROP // 2 for lo, hi in zip(low, high)])


def _empty(
    size: Sequence[int], origin: Sequence[float], direction: np.ndarray, spacing: Sequence[float] = (SPACING_MM,) * 3
) -> sitk.Image:
    """A geometry-only reference image for sitk.Resample."""
    image = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetDirection(np.asarray(direction, dtype=np.float64).ravel().tolist())
    return image


@dataclass(frozen=True, eq=False)
class Crop:
    """A 128³ window of a `CanonicalGrid` starting at grid voxel `start` (may lie partly outside the grid)."""

    grid: CanonicalGrid
    start: Triple

    @property
    def origin(self) -> np.ndarray:
        return self.grid.to_lps(np.asarray(self.start, dtype=np.float64))[0]

    def reference(self) -> sitk.Image:
        return _empty((CROP,) * 3, self.origin, self.grid.direction)

    def to_crop_index(self, lps: np.ndarray) -> np.ndarray:
        """LPS (N, 3) -> continuous (d, h, w) crop indices, the model's point coordinates."""
        return self.grid.to_index(lps) - np.asarray(self.start)

    def contains(self, low: Sequence[int], high: Sequence[int]) -> bool:
        return all(s <= lo and hi <= s + CROP - 1 for s, lo, hi in zip(self.start, low, high))

    def resample(self, image: sitk.Image, interpolator: int = sitk.sitkLinear) -> np.ndarray:
        """`image` on this crop as a float32 (d, h, w) array; 0 outside the image."""
        out = sitk.Resample(image, self.reference(), sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(out).transpose(2, 1, 0)

    def window(self, grid_array: np.ndarray) -> np.ndarray:
        """The crop cut from a whole-grid (i, j, k) array, zero-padded outside it."""
        out = np.zeros((CROP,) * 3, dtype=grid_array.dtype)
        src, dst = [], []
        for s, n in zip(self.start, grid_array.shape):
            lo, hi = max(s, 0), min(s + CROP, n)
            if hi <= lo:
                return out
            src.append(slice(lo, hi))
            dst.append(slice(lo - s, hi - s))
        out[tuple(dst)] = grid_array[tuple(src)]
        return out


def grid_array(grid: CanonicalGrid, image: sitk.Image, interpolator: int = sitk.sitkNearestNeighbor) -> np.ndarray:
    """`image` resampled onto the whole canonical grid, (i, j, k) order (labels: nearest neighbour)."""
    out = sitk.Resample(image, grid.reference(), sitk.Transform(), interpolator, 0.0, image.GetPixelID())
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def zscore_positive(crop: np.ndarray) -> np.ndarray:
    """torchio ZNormalization(masking_method=x > 0): mean/std (n−1) over voxels > 0, applied to every voxel."""
    values = crop[crop > 0].astype(np.float64)
    if values.size < 2 or values.std(ddof=1) == 0.0:
        values = crop.ravel().astype(np.float64)
    std = float(values.std(ddof=1))
    return ((crop - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def upsample(low_res: torch.Tensor) -> torch.Tensor:
    """(1, 1, 32, 32, 32) logits -> (1, 1, 128, 128, 128), trilinear, align_corners=False."""
    return F.interpolate(low_res, size=(CROP,) * 3, mode="trilinear", align_corners=False)


def crop_region(crop: Crop, image: Image) -> Optional[Tuple[Triple, Triple]]:
    """Inclusive (i, j, k) bounds of the original voxels whose centres may lie inside the crop; None if none do."""
    edges = np.array(list(itertools.product((-0.5, CROP - 0.5), repeat=3))) + np.asarray(crop.start)
    ijk = lps_to_index(image, crop.grid.to_lps(edges))
    size = np.asarray(image.shape_zyx[::-1])
    low = np.maximum(np.ceil(ijk.min(axis=0) - 1e-6), 0).astype(int)
    high = np.minimum(np.floor(ijk.max(axis=0) + 1e-6), size - 1).astype(int)
    if np.any(high < low):
        return None
    return tuple(low.tolist()), tuple(high.tolist())  # type: ignore[return-value]


def paste_back(
    logits_dhw: np.ndarray, crop: Crop, image: Image, previous: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, Optional[Tuple[int, int]]]:
    """Crop-space logits (128³, (d, h, w)) -> a (Z, Y, X) bool mask on `image`'s grid, and the slices it covers.

    The logits are resampled linearly (ITK, exact geometry) onto the original voxels inside the crop and
    thresholded at 0; voxels outside the crop keep `previous` (False without one)."""
    mask = np.zeros(image.shape_zyx, dtype=bool) if previous is None else previous.astype(bool, copy=True)
    region = crop_region(crop, image)
    if region is None:
        return mask, None
    (i0, j0, k0), (i1, j1, k1) = region
    zyx = np.ascontiguousarray(logits_dhw.transpose(2, 1, 0), dtype=np.float32)
    logits = to_sitk(zyx, crop.origin, (SPACING_MM,) * 3, crop.grid.direction)
    size = (i1 - i0 + 1, j1 - j0 + 1, k1 - k0 + 1)
    reference = _empty(size, index_to_lps(image, (i0, j0, k0)), image.direction, image.spacing)
    values = sitk.GetArrayFromImage(
        sitk.Resample(logits, reference, sitk.Transform(), sitk.sitkLinear, math.nan, sitk.sitkFloat32)
    )
    inside = ~np.isnan(values)
    target = mask[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1]
    target[inside] = values[inside] > 0
    covered = np.nonzero(inside.any(axis=(1, 2)))[0]
    if covered.size == 0:
        return mask, None
    return mask, (k0 + int(covered[0]), k0 + int(covered[-1]))


@dataclass
class _Rounds:
    """What the last call left: the clicks fed so far on one crop and the 32³ logits after the last of them."""

    image_key: Hashable
    start: Triple
    points: Tuple[Point, ...]
    low_res: torch.Tensor
    iou: float


class CropEngine:
    """Runs a 3D point model (`SamModel` with the 3D prompt encoder) on 128³ crops with an embedding cache."""

    def __init__(self, net: SamModel, device: torch.device, cache: EmbeddingCache) -> None:
        self.net = net
        self.device = device
        self.cache = cache
        self._rounds: Optional[_Rounds] = None
        self._sitk: Optional[Tuple[str, sitk.Image]] = None  # the last image as SimpleITK, by identity

    # -- crop choice ---------------------------------------------------------------------------------------------
    @staticmethod
    def _click_voxels(grid: CanonicalGrid, image: Image, points: Sequence[Point]) -> np.ndarray:
        """Canonical-grid voxels (N, 3) holding the clicks."""
        ijk = np.array([[p.x, p.y, p.z] for p in points], dtype=np.float64)
        return np.floor(grid.to_index(index_to_lps(image, ijk)) + 0.5).astype(int)

    @staticmethod
    def _mask_voxels(grid: CanonicalGrid, image: Image, mask: np.ndarray) -> Optional[np.ndarray]:
        """Canonical-grid voxel bounds (2, 3) of the mask's bounding box; None for an empty mask."""
        coords = np.nonzero(mask)
        if coords[0].size == 0:
            return None
        low = [c.min() - 0.5 for c in coords[::-1]]
        high = [c.max() + 0.5 for c in coords[::-1]]
        corners = np.array(list(itertools.product(*zip(low, high))))
        index = grid.to_index(index_to_lps(image, corners))
        return np.stack([np.floor(index.min(axis=0) + 0.5), np.ceil(index.max(axis=0) - 0.5)]).astype(int)

    def choose_crop(
        self, image: Image, points: Sequence[Point], image_key: Hashable, previous: Optional[np.ndarray] = None
    ) -> Crop:
        grid = CanonicalGrid.of(image)
        clicks = self._click_voxels(grid, image, points)
        low, high = clicks.min(axis=0), clicks.max(axis=0)
        span = high - low + 1
        if np.any(span > CROP):
            axis = int(np.argmax(span))
            raise PromptError(
                f"the clicks span {span[axis] * SPACING_MM:.0f} mm along the {'RAS'[axis]} axis; one 128³ crop at "
                f"{SPACING_MM} mm covers {CROP * SPACING_MM:.0f} mm. Segment distant parts separately (one set of "
                "clicks per structure), or remove the far clicks."
            )
        if previous is not None:
            bounds = self._mask_voxels(grid, image, previous)
            if bounds is not None:
                with_mask = np.minimum(low, bounds[0]), np.maximum(high, bounds[1])
                if np.all(with_mask[1] - with_mask[0] + 1 <= CROP):
                    low, high = with_mask
        last = self._rounds
        if last is not None and last.image_key == image_key and grid.crop(last.start).contains(low, high):
            return grid.crop(last.start)
        return grid.crop_around(low, high)

    # -- model -----------------------------------------------------------------------------------------------------
    def _image_sitk(self, image: Image) -> sitk.Image:
        if self._sitk is None or self._sitk[0] != image.identity:
            self._sitk = (image.identity, image_to_sitk(image))
        return self._sitk[1]

    def model_input(self, image: Image, crop: Crop) -> torch.Tensor:
        """The (1, 1, 128, 128, 128) z-scored encoder input of `crop`."""
        volume = zscore_positive(crop.resample(self._image_sitk(image)))
        return torch.from_numpy(np.ascontiguousarray(volume))[None, None]

    def embedding(self, image: Image, crop: Crop, image_key: Hashable, timings: dict) -> Tuple[torch.Tensor, bool]:
        key = (image_key, "crop128", crop.start)
        cached = self.cache.get(key)
        if cached is not None:
            return cached, False
        start = time.perf_counter()
        tensor = self.model_input(image, crop).to(self.device)
        timings["preprocess"] += ms_since(start)
        start = time.perf_counter()
        embedding = self.net.encode(tensor)
        self._sync()
        timings["encode"] += ms_since(start)
        self.cache.put(key, embedding)
        return embedding, True

    def click_round(
        self, embedding: torch.Tensor, point_dhw: Sequence[float], positive: bool, low_res: torch.Tensor
    ) -> Tuple[torch.Tensor, float]:
        """One round: the newest click (crop (d, h, w)) and the previous 32³ logits -> new logits, IoU estimate."""
        coords = torch.tensor([[list(point_dhw)]], dtype=torch.float32, device=self.device)
        labels = torch.tensor([[int(positive)]], dtype=torch.int64, device=self.device)
        new, iou = self.net.decode(embedding, points=(coords, labels), masks=low_res)
        return new, float(iou[0, 0])

    def _sync(self) -> None:
        synchronize(self.device)

    # -- the Session's entry point ---------------------------------------------------------------------------------
    def segment(
        self, image: Image, points: List[Point], image_key: Hashable, previous: Optional[np.ndarray] = None
    ) -> VolumeResult:
        """Clicks (voxel indices of `image`) -> a (Z, Y, X) mask; see the module doc for crops and rounds."""
        timings = dict.fromkeys(STAGES, 0.0)
        start = time.perf_counter()
        crop = self.choose_crop(image, points, image_key, previous)
        timings["preprocess"] += ms_since(start)
        embedding, encoded = self.embedding(image, crop, image_key, timings)

        start = time.perf_counter()
        last = self._rounds
        clicks = tuple(points)
        same_crop = last is not None and last.image_key == image_key and last.start == crop.start
        if last is not None and same_crop and not encoded and clicks[: len(last.points)] == last.points:
            done, low_res, iou = len(last.points), last.low_res, last.iou
        else:
            done, low_res, iou = 0, torch.zeros((1, 1, LOW_RES, LOW_RES, LOW_RES), device=self.device), float("nan")
        if done < len(clicks):
            ijk = np.array([[p.x, p.y, p.z] for p in clicks[done:]], dtype=np.float64)
            dhw = crop.to_crop_index(index_to_lps(image, ijk))
            for point, position in zip(clicks[done:], dhw):
                low_res, iou = self.click_round(embedding, position.tolist(), point.positive, low_res)
            self._sync()
        self._rounds = _Rounds(image_key, crop.start, clicks, low_res, iou)
        timings["decode"] += ms_since(start)

        start = time.perf_counter()
        logits = upsample(low_res)[0, 0].float().cpu().numpy()
        mask, z_range = paste_back(logits, crop, image, previous)
        timings["postprocess"] += ms_since(start)
        return VolumeResult(mask=mask, iou=iou, timings=timings, encoder_calls=int(encoded), z_range=z_range)


__all__ = [
    "CROP",
    "SPACING_MM",
    "CanonicalGrid",
    "Crop",
    "CropEngine",
    "canonical_axes",
    "grid_array",
    "image_to_sitk",
    "paste_back",
    "upsample",
    "zscore_positive",
]
