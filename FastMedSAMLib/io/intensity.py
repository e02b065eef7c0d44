"""The one rule that turns any image into the uint8 the 2D models see (Session and evaluation both use it).

`intensity_rule` decides, in this order (first match wins):
1. `window=(lo, hi)` given          -> "window": clip to [lo, hi], then min-max to 0-255.
2. uint8 voxels                     -> "as_stored": unchanged (bool: 0/255).
3. CT in Hounsfield units           -> "ct_window": clip to [-160, 240] (WL 40 / WW 400), then min-max to 0-255.
   CT means: the modality hint says CT; or, with no hint, signed-integer or float voxels reaching -500 or below
   (air is about -1000 HU; MR with a few negative interpolation artefacts, like z-scored MR, stays well above).
4. z-scored (over 5% of voxels < 0)  -> "percentile_all": clip to the 0.5/99.5 percentiles of all voxels
   (z-scored volumes have no zero background), then min-max to 0-255. A few negative voxels (MR interpolation
   ringing, e.g. the TotalSegmentator MR example at -47) do not make an image z-scored.
5. anything else (MR, uint16 microscopy, float) -> "percentile_positive": clip to the 0.5/99.5 percentiles of the
   voxels > 0, min-max to 0-255, and voxels that were 0 stay 0.

"min-max" is over the clipped image, the result truncated to uint8, bit for bit as the CVPR24 MedSAM
pre-processing computes it with numpy (float32 arithmetic for float32 voxels); a constant image gives zeros. Statistics are over the whole image or volume, never per slice. RGB images are treated
as one array of values. Shape is kept: (Z, Y, X), (Y, X) or (Y, X, 3).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..errors import ImageError
from .images import Image

CT_WINDOW = (-160.0, 240.0)
HU_AIR_THRESHOLD = -500.0
PERCENTILES = (0.5, 99.5)
ZSCORED_NEGATIVE_SHARE = 0.05  # z-scored volumes put roughly half their voxels below 0
RULES = ("window", "as_stored", "ct_window", "percentile_all", "percentile_positive")


def is_ct(image: Image) -> bool:
    """True for CT in HU: a CT modality hint, or (no hint) signed/float voxels down to air (<= -500)."""
    if image.modality_hint is not None:
        return image.modality_hint.upper().startswith("CT")
    return image.array.dtype.kind in "if" and float(image.array.min()) <= HU_AIR_THRESHOLD


def intensity_rule(image: Image, window: Optional[Tuple[float, float]] = None) -> str:
    """Which of `RULES` `to_uint8` applies to `image` (see the module documentation)."""
    if window is not None:
        return "window"
    if image.array.dtype in (np.uint8, np.bool_):
        return "as_stored"
    if is_ct(image):
        return "ct_window"
    if float(np.mean(image.array < 0)) > ZSCORED_NEGATIVE_SHARE:
        return "percentile_all"
    return "percentile_positive"


def to_uint8(image: Image, window: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """`image.array` as uint8 for the models, by `intensity_rule`."""
    array = image.array
    rule = intensity_rule(image, window)
    if rule == "as_stored":
        return array.astype(np.uint8) * 255 if array.dtype == np.bool_ else array
    if rule == "window":
        lo, hi = _check_window(window)
    elif rule == "ct_window":
        lo, hi = CT_WINDOW
    elif rule == "percentile_all":
        lo, hi = np.percentile(array, PERCENTILES)
    else:
        positive = array[array > 0]
        if positive.size == 0:
            return np.zeros(array.shape, dtype=np.uint8)
        lo, hi = np.percentile(positive, PERCENTILES)
    return _clip_min_max(array, lo, hi, keep_zeros=rule == "percentile_positive", by_slice=image.is_volume)


def _check_window(window: Optional[Tuple[float, float]]) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in window)  # type: ignore[union-attr]
    except (TypeError, ValueError) as error:
        raise ImageError(f"window must be two numbers (lo, hi), got {window!r}") from error
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ImageError(f"window must be finite with lo < hi, got ({lo}, {hi})")
    return lo, hi


def _clip_min_max(array: np.ndarray, lo: float, hi: float, keep_zeros: bool, by_slice: bool) -> np.ndarray:
    """clip(array, lo, hi), min-max of the clipped values to 0-255, truncated to uint8.

    Arithmetic runs in the dtype numpy gives the reference script: float32 for float32 voxels, else float64.
    A volume is done slice by slice to bound memory (same result)."""
    work = array.dtype if array.dtype.kind == "f" and array.dtype.itemsize >= 4 else np.dtype(np.float64)
    lo, hi = work.type(lo), work.type(hi)
    cmin = np.clip(work.type(array.min()), lo, hi)
    cmax = np.clip(work.type(array.max()), lo, hi)
    out = np.zeros(array.shape, dtype=np.uint8)
    if cmax <= cmin:
        return out
    chunks, targets = (array, out) if by_slice else (array[None], out[None])
    for source, target in zip(chunks, targets):
        scaled = (np.clip(source.astype(work), lo, hi) - cmin) / (cmax - cmin) * 255.0
        target[...] = scaled.astype(np.uint8)
        if keep_zeros:
            target[source == 0] = 0
    return out


__all__ = ["to_uint8", "intensity_rule", "is_ct", "CT_WINDOW", "HU_AIR_THRESHOLD", "PERCENTILES", "RULES"]
