"""Deterministic train / validation split of the development manifest, by case (never by slice or object).

Rules, per source folder, over its sorted case keys (an image, or a patient for DeepLesion, whose HU and npz
copies and two lesions are one case): every second case (index 1, 3, ...) is validation, the rest training; a
folder with a single case is validation only (its modality is then unseen in training). Folders outside the
reference table, whose labels are model-generated or derived, are training only; fundus vessels are not used.
The reported refine figures come from validation cases only."""
from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Dict, List, Sequence

from ..io.manifest import Entry

TRAIN = "train"
VALIDATION = "validation"
TRAIN_ONLY = ("ct_mr_totalseg_example", "mr_brain_voxelmorph", "ct_dcmqi_3slice")
UNUSED = ("fundus_drive", "mr_mni152_nilearn")  # vessel trees; tissue probability maps, not objects
_PATIENT = re.compile(r"^(CT_Lesion_\d+)")


def case_key(entry: Entry) -> str:
    name = PurePosixPath(entry.image_name).name
    stem = name.split(".")[0]
    match = _PATIENT.match(stem)
    return f"{entry.folder}/{match.group(1) if match else stem}"


def split(entries: Sequence[Entry]) -> Dict[str, str]:
    """case key -> TRAIN or VALIDATION for every used entry's case."""
    by_folder: Dict[str, List[str]] = {}
    for entry in entries:
        if entry.folder not in UNUSED:
            by_folder.setdefault(entry.folder, [])
            key = case_key(entry)
            if key not in by_folder[entry.folder]:
                by_folder[entry.folder].append(key)
    out: Dict[str, str] = {}
    for folder, keys in sorted(by_folder.items()):
        keys.sort()
        for i, key in enumerate(keys):
            if folder in TRAIN_ONLY:
                out[key] = TRAIN
            elif len(keys) == 1:
                out[key] = VALIDATION
            else:
                out[key] = VALIDATION if i % 2 else TRAIN
    return out


def part(entries: Sequence[Entry], which: str) -> List[Entry]:
    """The entries of one side of the split."""
    sides = split(entries)
    return [e for e in entries if sides.get(case_key(e)) == which]
