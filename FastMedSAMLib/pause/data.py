"""Unlabelled training slices for the pause heads, drawn from the development manifest away from what the
box-protocol evaluation scores in the reference table.

Sources (labels are never read except to find which slices a 3D target covers, so those are left out):
* whole volumes outside the reference table: mr_brain_voxelmorph, mr_mni152_nilearn (axial, coronal and sagittal
  slices), ct_dcmqi_3slice; the fundus images (skipped by the evaluation);
* slices of reference-table volumes outside the z-range of every labelled object (mr_la_heart, DeepLesion npz,
  mr_pyradiomics brains): the 3D box protocol never prompts them.
Each slice goes through the Session's intensity rule (`intensity.to_uint8` over the whole volume) and, with
probability 1/2, a random crop (50-100% of each side) and flips, so the heads see other scales.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from ..io.intensity import to_uint8
from ..io.manifest import Entry, load_image, load_label, read_manifest

WHOLE_VOLUMES = ("mr_brain_voxelmorph", "mr_mni152_nilearn", "ct_dcmqi_3slice")
OUTSIDE_LABELS = ("mr_la_heart", "ct_deeplesion_medsam2", "mr_pyradiomics")
IMAGES_2D = ("fundus_drive",)
CROPS_PER_2D_IMAGE = 6
REFORMATTED = ("mr_brain_voxelmorph", "mr_mni152_nilearn")  # near-isotropic: coronal and sagittal slices too


@dataclass(frozen=True)
class TrainingSlice:
    source: str  # "<image>:<axis>:<index>[:crop]"
    rgb: np.ndarray  # (H, W, 3) uint8


def _usable(slice_u8: np.ndarray) -> bool:
    """At least 5% non-zero pixels and some contrast."""
    return float((slice_u8 > 0).mean()) >= 0.05 and int(slice_u8.max()) - int(slice_u8.min()) >= 32


def _rgb(slice_u8: np.ndarray) -> np.ndarray:
    return slice_u8 if slice_u8.ndim == 3 else np.repeat(slice_u8[:, :, None], 3, axis=2)


def _augment(rgb: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, str]:
    h, w = rgb.shape[:2]
    ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = rgb[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    return np.ascontiguousarray(out), f"crop{y},{x},{ch},{cw}"


def _volume_slices(entry: Entry, skip_labelled: bool) -> List[Tuple[str, np.ndarray]]:
    volume = to_uint8(load_image(entry))
    axes = (0, 1, 2) if entry.folder in REFORMATTED else (0,)
    labelled: set = set()
    if skip_labelled:
        label = load_label(entry)
        labelled = set(np.nonzero(label.reshape(label.shape[0], -1).any(axis=1))[0].tolist())
    found = []
    for axis in axes:
        for index in range(volume.shape[axis]):
            if axis == 0 and index in labelled:
                continue
            plane = np.take(volume, index, axis=axis)
            if _usable(plane):
                found.append((f"{entry.image_name}:{axis}:{index}", plane))
    return found


def training_slices(manifest: Union[str, Path], count: int, seed: int) -> List[TrainingSlice]:
    """`count` slices (or all there are), drawn evenly over the sources, with fixed-seed augmentation."""
    rng = np.random.default_rng(seed)
    pools: Dict[str, List[Tuple[str, np.ndarray]]] = {}
    for entry in read_manifest(manifest):
        if entry.folder in WHOLE_VOLUMES or entry.folder in OUTSIDE_LABELS:
            if entry.dim != "3D" or entry.datasets == ("mr_pyradiomics_phantom",):
                continue
            pools.setdefault(entry.folder, []).extend(_volume_slices(entry, entry.folder in OUTSIDE_LABELS))
        elif entry.folder in IMAGES_2D:
            rgb = _rgb(to_uint8(load_image(entry)))
            pools.setdefault(entry.folder, []).extend(
                [(entry.image_name, rgb)] + [(entry.image_name, rgb)] * (CROPS_PER_2D_IMAGE - 1)
            )
    chosen = _spread(pools, count, rng)
    slices, seen = [], set()
    for source, plane in chosen:
        rgb = _rgb(plane)
        if rng.random() < 0.5 or source in seen:  # repeated 2D images are always cropped
            rgb, how = _augment(rgb, rng)
            seen.add(source)
            source = f"{source}:{how}"
        seen.add(source)
        slices.append(TrainingSlice(source, rgb))
    return slices


def _spread(pools: Dict[str, List[Tuple[str, np.ndarray]]], count: int, rng: np.random.Generator) -> List[Tuple[str, np.ndarray]]:
    """About the same number of slices from each source (all of a small one), evenly spaced within a source."""
    names = sorted(pools)
    left, chosen = count, []
    for i, name in enumerate(sorted(names, key=lambda n: len(pools[n]))):
        share = left // (len(names) - i)
        pool = pools[name]
        picks = np.linspace(0, len(pool) - 1, num=min(share, len(pool))).round().astype(int) if pool else []
        chosen.extend(pool[j] for j in picks)
        left -= len(picks)
    order = rng.permutation(len(chosen))
    return [chosen[j] for j in order]


def summary(slices: Sequence[TrainingSlice]) -> Dict[str, int]:
    """Slices per source dataset (for the heads' note)."""
    counts: Dict[str, int] = {}
    for s in slices:
        name = s.source.split("/")[0]
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
