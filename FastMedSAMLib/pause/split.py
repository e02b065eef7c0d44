"""Which development images token pausing may learn from, calibrate its knob on, and be measured on.

* training: every image a slice of which trained the pause heads (read from the heads file's
  `meta.slice_sources`, the authoritative record), whether or not it is in the reference table;
* calibration / evaluation: the reference-table images the heads never saw, split by scan within each source
  folder: scans ordered by the sha256 of their name, the first round(n/3) calibrate the knob, the rest are
  evaluated (a folder with a single unseen scan is evaluation only, so every dataset keeps a score).
Two manifest rows holding the same scan (a down-sampled copy, a HU re-export) count as one scan, so no scan is
on both sides. Deterministic: the same manifest and heads give the same split; it is recorded in
`models/litemedsam-pause-split.json` and checked against this rule by the tests.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Set, Union

from ..io.manifest import read_manifest

ROLES = ("training", "calibration", "evaluation")
# manifest rows that are another copy of the same scan -> the row standing for it
SAME_SCAN = {
    "ct_mr_totalseg_example/example_ct_sm.nii.gz": "ct_mr_totalseg_example/example_ct.nii.gz",
    "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115_HU.nii.gz":
        "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115.npz",
}
Split = Dict[str, List[str]]


def trained_images(slice_sources: Iterable[str]) -> Set[str]:
    """Manifest image names behind the heads' training slices ("<image>:<axis>:<index>[:crop]" or "<image>")."""
    return {source.split(":")[0] for source in slice_sources}


def _rank(scan: str) -> str:
    return hashlib.sha256(scan.encode("utf-8")).hexdigest()


def make_split(manifest: Union[str, Path], trained: Iterable[str]) -> Split:
    """The split (see the module docstring): role -> sorted manifest image names."""
    from ..evaluation.box_protocol import REFERENCE

    trained = set(trained)
    scans: Dict[str, Dict[str, List[str]]] = {}  # folder -> scan -> its image names
    out: Dict[str, Set[str]] = {role: set() for role in ROLES}
    for entry in read_manifest(manifest):
        name = entry.image_name
        scan = SAME_SCAN.get(name, name)
        if name in trained or scan in trained:
            out["training"].add(name)
        elif any(d in REFERENCE for d in entry.datasets):
            scans.setdefault(entry.folder, {}).setdefault(scan, []).append(name)
    for folder, members in scans.items():
        ordered = sorted(members, key=_rank)
        cut = int(len(ordered) / 3 + 0.5) if len(ordered) > 1 else 0
        for i, scan in enumerate(ordered):
            out["calibration" if i < cut else "evaluation"].update(members[scan])
    return {role: sorted(names) for role, names in out.items()}


def check_disjoint(split: Mapping[str, List[str]]) -> None:
    """ValueError when an image sits in two roles."""
    for i, a in enumerate(ROLES):
        for b in ROLES[i + 1:]:
            both = set(split[a]) & set(split[b])
            if both:
                raise ValueError(f"images in both {a} and {b}: {sorted(both)}")


def save_split(split: Split, path: Union[str, Path], meta: Mapping[str, str]) -> None:
    Path(path).write_text(json.dumps({**meta, **split}, indent=1) + "\n", encoding="utf-8")


def load_split(path: Union[str, Path]) -> Split:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {role: list(data[role]) for role in ROLES}


def committed_split() -> Split:
    """The recorded split of the committed LiteMedSAM pause heads (`models/litemedsam-pause-split.json`)."""
    return load_split(Path(__file__).resolve().parents[2] / "models" / "litemedsam-pause-split.json")
