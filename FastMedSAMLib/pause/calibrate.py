"""Calibrating the knob on held-apart images, and measuring what it does on any set of images.

The knob is meant to be the fraction of the ViT's token work that pausing skips (the mean over blocks of the
paused share of each block's tokens, `PauseStats.paused_fraction`). Fitted on the heads' own training tokens it
drifts on other images (they pause less: 0.5 paused about a third of the tokens on the reference-table slices),
so here it is fitted on real paused forwards of calibration images instead: the realised fraction is measured at
a grid of thresholds and `knob_table[i]` becomes the threshold at which it reaches i/100 (linear in between,
kept monotone). The heads' weights are not touched.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from ..io.intensity import to_uint8
from ..io.manifest import load_image, load_label, read_manifest
from .heads import PauseHeads
from .tinyvit_paused import PausedTinyViT

SLICES_PER_VOLUME = 4
GRID = 21  # thresholds measured: the old table at knob 0, 0.05, ..., 1
KNOBS = (0.1, 0.25, 0.5, 0.75, 1.0)


def split_slices(manifest: Union[str, Path], images: Sequence[str],
                 per_volume: int = SLICES_PER_VOLUME) -> List[Tuple[str, str, np.ndarray]]:
    """(dataset folder, source, uint8 RGB) for `images`: 2D images whole (each once), 3D volumes at `per_volume`
    slices spread over the z-range their labels cover (where the box protocol prompts; labels pick slices only)."""
    wanted, seen, out = set(images), set(), []
    for entry in read_manifest(manifest):
        name = entry.image_name
        if name not in wanted or name in seen:
            continue
        seen.add(name)
        image = load_image(entry)
        u8 = to_uint8(image)
        if not image.is_volume:
            out.append((entry.folder, name, _rgb(u8)))
            continue
        label = load_label(entry)
        z = np.nonzero(label.reshape(label.shape[0], -1).any(axis=1))[0]
        lo, hi = (int(z.min()), int(z.max())) if len(z) else (0, u8.shape[0] - 1)
        for index in np.unique(np.linspace(lo, hi, per_volume + 2)[1:-1].round().astype(int)):
            out.append((entry.folder, f"{name}:0:{index}", _rgb(u8[index])))
    missing = wanted - seen
    if missing:
        raise ValueError(f"images not in the manifest: {sorted(missing)}")
    return out


def _rgb(u8: np.ndarray) -> np.ndarray:
    return u8 if u8.ndim == 3 else np.repeat(u8[:, :, None], 3, axis=2)


def to_tensors(slices: Sequence[Tuple[str, str, np.ndarray]]) -> List[torch.Tensor]:
    from ..models.litemedsam import LiteMedSAMAdapter

    return [LiteMedSAMAdapter().preprocess(rgb)[0] for _, _, rgb in slices]


def _decider(heads: PauseHeads, threshold: float) -> Callable:
    def decide(depth: int, features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        head = heads.head_at(depth)
        if head is None:
            return torch.zeros(features.shape[0], dtype=torch.bool)
        return head(features) < threshold
    return decide


@torch.inference_mode()
def realised(runner: PausedTinyViT, heads: PauseHeads, thresholds: Sequence[float],
             tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """(thresholds, images) realised paused fraction (mean over blocks) of real paused forwards."""
    out = np.zeros((len(thresholds), len(tensors)))
    for i, threshold in enumerate(thresholds):
        decide = _decider(heads, float(threshold))
        for j, tensor in enumerate(tensors):
            _, stats = runner(tensor, decide=decide)
            out[i, j] = float(np.mean(stats.paused_fraction()))
    return out


def fit_table(thresholds: np.ndarray, fractions: np.ndarray, points: int) -> np.ndarray:
    """Knob table: for level i/(points-1), the threshold at which the mean realised fraction reaches it, linear
    between measured thresholds; monotone (the measured curve is made non-decreasing first)."""
    order = np.argsort(thresholds)
    t, f = thresholds[order], np.maximum.accumulate(fractions[order])
    levels = np.linspace(0.0, 1.0, points)
    table = np.empty(points)
    for i, level in enumerate(levels):
        above = np.nonzero(f >= level - 1e-9)[0]
        if len(above) == 0:
            table[i] = t[-1]
            continue
        k = int(above[0])
        if k == 0 or f[k] == f[k - 1]:
            table[i] = t[k]
        else:
            table[i] = t[k - 1] + (level - f[k - 1]) / (f[k] - f[k - 1]) * (t[k] - t[k - 1])
    table[0] = min(table[0], thresholds.min())  # knob -> 0 pauses (next to) nothing
    return np.maximum.accumulate(table)


def calibrate(encoder, heads: PauseHeads, tensors: Sequence[torch.Tensor], grid: int = GRID) -> Dict:
    """Refit `heads.knob_table` on `tensors` (in place); returns the measured curve."""
    runner = PausedTinyViT(encoder, heads.catchup, adapters=heads.adapters).eval()
    old = heads.knob_table.clone()
    thresholds = np.array([heads.threshold(p) for p in np.linspace(0.0, 1.0, grid)])
    fractions = realised(runner, heads, thresholds, tensors).mean(axis=1)
    table = fit_table(thresholds, fractions, len(old))
    heads.knob_table.copy_(torch.from_numpy(table).to(old.dtype))
    return {"thresholds": thresholds.round(5).tolist(), "realised_fraction": fractions.round(4).tolist(),
            "images": len(tensors)}


def fractions_per_knob(encoder, heads: PauseHeads, sets: Dict[str, Sequence[torch.Tensor]],
                       knobs: Sequence[float] = KNOBS) -> Dict[str, Dict[str, Dict[str, float]]]:
    """set -> knob -> mean / min / max over the set's images of the realised paused fraction."""
    runner = PausedTinyViT(encoder, heads.catchup, adapters=heads.adapters).eval()
    thresholds = [heads.threshold(p) for p in knobs]
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name, tensors in sets.items():
        values = realised(runner, heads, thresholds, tensors)
        out[name] = {f"{p:g}": {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4),
                                "max": round(float(v.max()), 4)} for p, v in zip(knobs, values)}
    return out


def knob_error(fractions: Dict[str, Dict[str, float]]) -> float:
    """Largest |realised mean fraction - knob| over the knobs of one set."""
    return max(abs(v["mean"] - float(k)) for k, v in fractions.items())


def training_subset(manifest: Union[str, Path], slice_sources: Sequence[str], count: int,
                    seed: int = 0) -> List[Tuple[str, str, np.ndarray]]:
    """`count` of the heads' own training slices (same seed and rule as training), evenly spaced."""
    from .data import training_slices

    slices = training_slices(manifest, len(slice_sources), seed)
    if [s.source for s in slices] != list(slice_sources):
        raise ValueError("the manifest no longer gives the heads' training slices (manifest changed?)")
    picks = np.linspace(0, len(slices) - 1, num=min(count, len(slices))).round().astype(int)
    return [(slices[i].source.split("/")[0], slices[i].source, slices[i].rgb) for i in picks]


def per_folder(slices: Sequence[Tuple[str, str, np.ndarray]]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for folder, _, _ in slices:
        counts[folder] = counts.get(folder, 0) + 1
    return dict(sorted(counts.items()))
