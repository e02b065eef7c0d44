"""Training slices for the refinement decoder, with their image embeddings computed once and cached on disk.

Only training cases of the split (`split.py`) are read. Each record is one slice: its LiteMedSAM embedding (fp16,
256x64x64), and per object its ground truth in the model's 256 frame, plus, for slices of 3D volumes, the same
object's mask on the two neighbouring slices (what mask-prompted propagation feeds back). Sources:
* 2D images: the image itself and `crops - 1` random crops (60-100 % of each side) with flips (default
  `CROPS_PER_2D_IMAGE`);
* 3D volumes: up to `slices` axial slices evenly spread over the labelled ones (default `SLICES_PER_VOLUME`); every
  label value with at least `MIN_PIXELS` pixels (in the frame) on a slice is an object.
At most `OBJECTS_PER_SLICE` objects per slice (a fixed-seed sample). The cache lives outside git
(`~/.cache/fastmedsam/refine-train/`, or `$FASTMEDSAM_CACHE/refine-train`) and is keyed by the slice's source and
the settings, so a rerun encodes nothing twice.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np
import torch

from ..io.intensity import to_uint8
from ..io.manifest import Entry, load_image, load_label, read_manifest, targets
from ..models.base import Frame
from .split import TRAIN, case_key, split

CROPS_PER_2D_IMAGE = 4
SLICES_PER_VOLUME = 12
OBJECTS_PER_SLICE = 16
MIN_PIXELS = 12  # in the 256 frame
FORMAT = 1


@dataclass
class Record:
    source: str
    embedding: torch.Tensor  # (256, 64, 64) float16
    masks: torch.Tensor  # (N, 256, 256) bool, ground truth in the model frame (padded bottom/right)
    neighbours: torch.Tensor  # (N, 2, 256, 256) bool, same object on slices z-1 / z+1 (zeros for 2D)
    has_neighbours: torch.Tensor  # (N, 2) bool
    frame_hw: Tuple[int, int]  # resized (height, width) of the slice inside the frame


def cache_root() -> Path:
    from ..weights.store import cache_dir

    return cache_dir() / "refine-train"


def to_frame(mask: np.ndarray, frame: Frame) -> np.ndarray:
    """(H, W) bool -> (size, size) bool in the model frame (nearest resize, padded bottom/right)."""
    out = np.zeros((frame.size, frame.size), dtype=bool)
    resized = cv2.resize(mask.astype(np.uint8), (frame.resized_width, frame.resized_height), interpolation=cv2.INTER_NEAREST)
    out[: frame.resized_height, : frame.resized_width] = resized > 0
    return out


def _rgb(plane: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(plane if plane.ndim == 3 else np.repeat(plane[:, :, None], 3, axis=2))


def _crop(rgb: np.ndarray, masks: List[np.ndarray], rng: np.random.Generator) -> Tuple[np.ndarray, List[np.ndarray], str]:
    h, w = rgb.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    flip_x, flip_y = bool(rng.random() < 0.5), bool(rng.random() < 0.5)

    def cut(a: np.ndarray) -> np.ndarray:
        a = a[y : y + ch, x : x + cw]
        a = a[:, ::-1] if flip_x else a
        return np.ascontiguousarray(a[::-1] if flip_y else a)

    return cut(rgb), [cut(m) for m in masks], f"crop{y},{x},{ch},{cw},{int(flip_x)}{int(flip_y)}"


# one slice to encode: (source, rgb, [(gt, neighbour below or None, neighbour above or None)])
SliceObjects = Tuple[str, np.ndarray, List[Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]]]


def _slices_2d(entries: List[Entry], rng: np.random.Generator, crops: int) -> Iterator[SliceObjects]:
    by_image: Dict[str, List[Entry]] = {}
    for entry in entries:
        by_image.setdefault(entry.image_name, []).append(entry)
    for name, group in sorted(by_image.items()):
        rgb = _rgb(to_uint8(load_image(group[0])))
        masks = [t.mask(label) for e in group for label in [load_label(e)] for t in targets(e, label)]
        for variant in range(crops):
            if variant == 0:
                yield name, rgb, [(m, None, None) for m in masks]
            else:
                crop, cut, how = _crop(rgb, masks, rng)
                yield f"{name}:{how}", crop, [(m, None, None) for m in cut]


def _slices_3d(entry: Entry, slices: int) -> Iterator[SliceObjects]:
    volume = to_uint8(load_image(entry))
    label = load_label(entry)
    labelled = np.nonzero(label.reshape(label.shape[0], -1).any(axis=1))[0]
    picks = labelled[np.linspace(0, len(labelled) - 1, num=min(slices, len(labelled))).round().astype(int)]
    for z in sorted(set(int(v) for v in picks)):
        objects = []
        for value in (int(v) for v in np.unique(label[z]) if v != 0):
            below = label[z - 1] == value if z > 0 else None
            above = label[z + 1] == value if z + 1 < label.shape[0] else None
            objects.append((label[z] == value, below, above))
        yield f"{entry.image_name}:z{z}", _rgb(volume[z]), objects


def training_slices(manifest: Union[str, Path], seed: int, slices: int = SLICES_PER_VOLUME,
                    crops: int = CROPS_PER_2D_IMAGE) -> Iterator[SliceObjects]:
    entries = read_manifest(manifest)
    sides = split(entries)
    train = [e for e in entries if sides.get(case_key(e)) == TRAIN]
    rng = np.random.default_rng(seed)
    yield from _slices_2d([e for e in train if e.dim == "2D"], rng, crops)
    for entry in (e for e in train if e.dim == "3D"):
        yield from _slices_3d(entry, slices)


def _key(source: str, seed: int) -> str:
    text = json.dumps([FORMAT, source, seed, OBJECTS_PER_SLICE, MIN_PIXELS])  # what shapes one record's content
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _record(source: str, rgb: np.ndarray, objects, net, adapter, seed: int) -> Optional[Record]:
    rng = np.random.default_rng([seed, int(_key(source, seed), 16) % 2**32])  # per slice: reproducible out of order
    tensor, frame = adapter.preprocess(rgb)
    kept = []
    for gt, below, above in objects:
        framed = to_frame(gt, frame)
        if framed.sum() >= MIN_PIXELS:
            kept.append((framed, below, above))
    if not kept:
        return None
    if len(kept) > OBJECTS_PER_SLICE:
        kept = [kept[i] for i in sorted(rng.choice(len(kept), OBJECTS_PER_SLICE, replace=False))]
    masks = torch.from_numpy(np.stack([k[0] for k in kept]))
    neighbours = torch.zeros((len(kept), 2, frame.size, frame.size), dtype=torch.bool)
    has = torch.zeros((len(kept), 2), dtype=torch.bool)
    for i, (_, below, above) in enumerate(kept):
        for j, other in enumerate((below, above)):
            if other is not None and other.any():
                neighbours[i, j] = torch.from_numpy(to_frame(other, frame))
                has[i, j] = True
    embedding = net.encode(tensor)[0].to(torch.float16)
    return Record(source, embedding, masks, neighbours, has, (frame.resized_height, frame.resized_width))


def build_cache(manifest: Union[str, Path], seed: int = 0, root: Optional[Path] = None, log=print,
                slices: int = SLICES_PER_VOLUME, crops: int = CROPS_PER_2D_IMAGE) -> List[Path]:
    """Encode every training slice not cached yet; returns the record files in a fixed order."""
    from ..models import load_model, slice_adapter

    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    net, adapter = None, slice_adapter("litemedsam")
    paths: List[Path] = []
    started = time.perf_counter()
    for source, rgb, objects in training_slices(manifest, seed, slices, crops):
        path = root / f"{_key(source, seed)}.pt"
        empty = path.with_suffix(".empty")
        if not path.exists() and not empty.exists():
            if net is None:
                net = load_model("litemedsam")
            record = _record(source, rgb, objects, net, adapter, seed)
            if record is None:
                empty.touch()
                continue
            torch.save(record.__dict__, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").rename(path)
            log(f"encoded {source} ({len(record.masks)} objects) at {time.perf_counter() - started:.0f} s")
        if path.exists():
            paths.append(path)
    return paths


def load_records(paths: List[Path]) -> List[Record]:
    return [Record(**torch.load(p, weights_only=True)) for p in paths]
