"""The development-set manifest (`shared/data/manifest.json`) as evaluation targets.

Each manifest entry is one image/label pair; `targets()` turns it into the objects the CVPR24 box protocol
prompts, following the rules of `shared/docs/reference-baseline.md`:
- 3D entries: one target per label value, prompted with its 3D box (propagated middle-out);
- 2D entries: one target per object, prompted with its tight box. Objects are label values (BTCV), the mask file
  (SAM-Med2D demo, one file per object), both lungs together (`xray_lung`) and each lung (`xray_lung_cc`),
  instances (DSB nuclei, TCGA nuclei) or connected components (ISBI EM cells, 4-connected, >= 100 px),
  instances sampled per image with a fixed seed.
Entries outside the reference table get rows of their own so they never mix into a reference row; fundus vessels
are skipped (a box around a vessel tree covers the whole retina, so the box protocol is ill-posed for them and the
reference has no fundus row).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from ..errors import FastMedSAMError, ImageError
from ..prompts import Box, Box3D
from .images import Image, read_image, read_label

MANUAL = "manual"
MODEL_GENERATED = "model-generated"
SEED = 0

# instances sampled per image. 60 is the reference's stated rule; its table lists 300 ISBI EM objects over the
# 3 EM images of the manifest (each has >= 117 qualifying components), i.e. 100 per image, kept here to match.
INSTANCES_PER_IMAGE: Dict[str, int] = {
    "micro_dsb2018_stardist": 60,
    "path_tcga_gbm_nuclei": 60,
    "micro_em_isbi2012": 100,
}
EM_MIN_PIXELS = 100
# gt strings that mark labels made by a model or derived automatically (report apart from manual labels)
_GENERATED_WORDS = ("model-generated", "automatic", "derived", "pseudo")
# entries that sit in a reference folder but are not what the reference measured: row name for them
_SEPARATE_ROWS: Dict[str, str] = {
    "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115_HU.nii.gz": "ct_deeplesion_medsam2_hu",
    "mr_pyradiomics/prostate_phantom_subvolume.nrrd": "mr_pyradiomics_phantom",
}
SKIPPED_DATASETS: Dict[str, str] = {
    "fundus_drive": "vessel trees are thin structures spanning the retina: a tight box is ill-posed "
    "(the reference table has no fundus row)",
}

MaskFn = Callable[[np.ndarray], np.ndarray]


class ManifestError(FastMedSAMError, ValueError):
    """The manifest file is missing, malformed, or points at files that do not exist."""


@dataclass(frozen=True)
class Entry:
    """One manifest row with its paths resolved against the manifest's folder."""

    index: int
    folder: str  # first path component of the image: the source dataset
    dim: str  # "2D" or "3D"
    modality: str  # as the manifest writes it, e.g. "MR (LGE)"
    image_path: Path
    label_path: Path
    label_key: Optional[str]  # array name inside an .npz label ("gts"), else None
    gt: str
    notes: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def image_name(self) -> str:
        return str(self.raw["image"])

    @property
    def modality_class(self) -> str:
        """The modality without its qualifier: "MR (LGE)" -> "MR", "CT (2D slice)" -> "CT"."""
        return self.modality.split("(")[0].strip()

    @property
    def gt_kind(self) -> str:
        text = self.gt.lower()
        return MODEL_GENERATED if any(word in text for word in _GENERATED_WORDS) else MANUAL

    @property
    def datasets(self) -> Tuple[str, ...]:
        """The result rows this entry contributes to (empty when it is skipped)."""
        if self.folder in SKIPPED_DATASETS:
            return ()
        if self.folder == "xray_lung":
            return ("xray_lung", "xray_lung_cc")
        return (_SEPARATE_ROWS.get(self.image_name, self.folder),)

    @property
    def skip_reason(self) -> Optional[str]:
        return SKIPPED_DATASETS.get(self.folder)


@dataclass(frozen=True)
class Target:
    """One object to segment: its result row, where it comes from, its box prompt and how to cut its mask."""

    dataset: str
    entry: Entry
    name: str  # label value with its name, "mask", "lungs", "instance 17", "component 4"
    box: Union[Box, Box3D]
    mask_fn: MaskFn = field(repr=False, compare=False)

    def mask(self, label: np.ndarray) -> np.ndarray:
        return self.mask_fn(label)


# -- reading -------------------------------------------------------------------------------------------------------
def read_manifest(path: Union[str, Path]) -> List[Entry]:
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"manifest {path} is not valid JSON: {exc}") from None
    if not isinstance(rows, list):
        raise ManifestError(f"manifest {path} must be a JSON list of entries, got {type(rows).__name__}")
    return [_entry(i, row, path.parent) for i, row in enumerate(rows)]


def _entry(index: int, row: Any, root: Path) -> Entry:
    where = f"manifest entry {index}"
    if not isinstance(row, Mapping):
        raise ManifestError(f"{where} must be an object")
    for key in ("dim", "modality", "image", "label"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise ManifestError(f"{where} lacks the text field {key!r}")
    if row["dim"] not in ("2D", "3D"):
        raise ManifestError(f"{where}: dim {row['dim']!r} is neither '2D' nor '3D'")
    label, _, key = row["label"].partition("::")
    return Entry(
        index=index,
        folder=Path(row["image"]).parts[0],
        dim=row["dim"],
        modality=row["modality"],
        image_path=root / row["image"],
        label_path=root / label,
        label_key=key or None,
        gt=str(row.get("gt", "")),
        notes=str(row.get("notes", "")),
        raw=row,
    )


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ManifestError(f"file named by the manifest does not exist: {path}")
    return path


def load_image(entry: Entry) -> Image:
    """The entry's image as stored, with its geometry and the manifest's modality as the intensity hint."""
    image = read_image(_require(entry.image_path))
    return replace(image, modality_hint=entry.modality_class)


def load_label(entry: Entry) -> np.ndarray:
    """The entry's label array, (Z, Y, X) for volumes and (Y, X) for 2D images."""
    _require(entry.label_path)
    member = f"::{entry.label_key}" if entry.label_key else ""
    return read_label(f"{entry.label_path}{member}").array


# -- targets -------------------------------------------------------------------------------------------------------
def tight_box(mask: np.ndarray) -> Union[Box, Box3D]:
    """Inclusive voxel-index box around `mask`: Box for (Y, X), Box3D for (Z, Y, X)."""
    coords = np.nonzero(mask)
    if len(coords[0]) == 0:
        raise ValueError("cannot box an empty mask")
    low = [int(c.min()) for c in coords]
    high = [int(c.max()) for c in coords]
    if mask.ndim == 2:
        return Box(low[1], low[0], high[1], high[0])
    return Box3D(low[2], low[1], low[0], high[2], high[1], high[0])


def _equals(value: int) -> MaskFn:
    return lambda label: label == value


def _nonzero(label: np.ndarray) -> np.ndarray:
    return label > 0


def _component(components: np.ndarray, index: int) -> MaskFn:
    return lambda label: components == index


def _sample(ids: Sequence[int], cap: Optional[int], seed: int) -> List[int]:
    ids = sorted(ids)
    if cap is None or len(ids) <= cap:
        return ids
    return sorted(int(i) for i in np.random.default_rng(seed).choice(ids, size=cap, replace=False))


def _label_names(entry: Entry) -> Dict[int, str]:
    present = entry.raw.get("labels_present") or {}
    return {int(k): str(v) for k, v in present.items() if str(k).lstrip("-").isdigit()}


def targets(
    entry: Entry,
    label: np.ndarray,
    *,
    instances_per_image: Optional[Mapping[str, Optional[int]]] = None,
    seed: int = SEED,
) -> List[Target]:
    """The evaluation targets of `entry` given its label array (see the module docstring for the rules).

    `instances_per_image` overrides the per-dataset sampling caps (None as a value: take every instance)."""
    if entry.skip_reason:
        return []
    caps = dict(INSTANCES_PER_IMAGE, **(instances_per_image or {}))
    dataset = entry.datasets[0]
    found: List[Tuple[str, str, np.ndarray, MaskFn]] = []  # (row, name, mask, mask_fn)
    if entry.folder == "xray_lung":
        lungs = label > 0
        found.append(("xray_lung", "lungs", lungs, _nonzero))
        # 8-connected: a lung outline may touch itself diagonally (MCUCXR_0001 has a 1-px diagonal spur)
        components, count = ndimage.label(lungs, structure=np.ones((3, 3), dtype=bool))
        for index in range(1, count + 1):
            found.append(("xray_lung_cc", f"lung {index}", components == index, _component(components, index)))
    elif entry.folder == "micro_em_isbi2012":
        components, count = ndimage.label(label > 127, structure=ndimage.generate_binary_structure(2, 1))
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        kept = [i for i in range(1, count + 1) if sizes[i] >= EM_MIN_PIXELS]
        for index in _sample(kept, caps.get(entry.folder), seed):
            found.append((dataset, f"component {index}", components == index, _component(components, index)))
    elif entry.folder in caps:
        ids = [int(v) for v in np.unique(label) if v != 0]
        for value in _sample(ids, caps.get(entry.folder), seed):
            found.append((dataset, f"instance {value}", label == value, _equals(value)))
    elif entry.dim == "2D" and set(np.unique(label).tolist()) <= {0, 255}:
        found.append((dataset, "mask", label > 0, _nonzero))  # one object per mask file
    else:
        names = _label_names(entry)
        for value in (int(v) for v in np.unique(label) if v != 0):
            name = f"{value}:{names[value]}" if value in names else str(value)
            found.append((dataset, name, label == value, _equals(value)))
    return [Target(row, entry, name, tight_box(mask), fn) for row, name, mask, fn in found]


def check_shapes(entry: Entry, image: Image, label: np.ndarray) -> None:
    spatial = image.array.shape if image.is_volume else image.array.shape[:2]
    if (entry.dim == "3D") != image.is_volume or label.shape != spatial:
        raise ImageError(
            f"{entry.image_name} ({entry.dim} in the manifest): label shape {label.shape} does not match the image's "
            f"{image.array.shape} ({entry.label_path})"
        )


def select(entries: Sequence[Entry], datasets: Optional[Sequence[str]] = None) -> List[Entry]:
    """Entries contributing to any of `datasets` (all evaluable entries when None); unknown names raise."""
    if not datasets:
        return [e for e in entries if e.datasets]
    known = {name for e in entries for name in e.datasets} | {e.folder for e in entries}
    unknown = sorted(set(datasets) - known)
    if unknown:
        raise ManifestError(f"unknown dataset(s) {', '.join(unknown)}; the manifest has: {', '.join(sorted(known))}")
    wanted = set(datasets)
    return [e for e in entries if wanted & set(e.datasets)]


def iter_cases(
    entries: Sequence[Entry],
    datasets: Optional[Sequence[str]] = None,
    **target_options: Any,
) -> Iterator[Tuple[Entry, Image, np.ndarray, List[Target]]]:
    """(entry, image, label, targets) for each selected entry, loading one image at a time."""
    wanted = set(datasets) if datasets else None
    for entry in select(entries, datasets):
        image, label = load_image(entry), load_label(entry)
        check_shapes(entry, image, label)
        found = [t for t in targets(entry, label, **target_options) if wanted is None or t.dataset in wanted]
        yield entry, image, label, found
