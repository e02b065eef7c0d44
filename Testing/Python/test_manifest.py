"""Evaluation targets from the real development manifest, checked against the reference table's object counts."""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from FastMedSAMLib.errors import ImageError
from FastMedSAMLib.evaluation.box_protocol import REFERENCE
from FastMedSAMLib.io.manifest import (
    MANUAL,
    MODEL_GENERATED,
    ManifestError,
    iter_cases,
    load_image,
    load_label,
    read_manifest,
    select,
    targets,
    tight_box,
)
from FastMedSAMLib.prompts import Box, Box3D


@pytest.fixture(scope="module")
def entries(manifest_path):
    return read_manifest(manifest_path)


@pytest.fixture(scope="module")
def cases(entries):
    return list(iter_cases(entries))


@pytest.fixture(scope="module")
def by_dataset(cases):
    grouped = defaultdict(list)
    for entry, _, label, found in cases:
        for target in found:
            grouped[target.dataset].append((entry, label, target))
    return grouped


def test_reference_dict_matches_the_reference_document(manifest_path):
    doc = (manifest_path.parent.parent / "docs" / "reference-baseline.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\w+) \| ([^|]+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", doc, flags=re.M)
    parsed = {name: (prompt.strip(), int(n), float(d), float(s)) for name, prompt, n, d, s in rows}
    assert parsed == REFERENCE


def test_target_counts_match_the_reference_table(by_dataset, entries):
    counts = {name: len(rows) for name, rows in by_dataset.items()}
    for name, (_, objects, _, _) in REFERENCE.items():
        if name == "ct_mr_totalseg_example":
            continue
        assert counts[name] == objects, name
    # TotalSegmentator: every label value of the three volumes. The reference table lists 38 objects, which no
    # rule stated in the reference reproduces (see evaluate.REFERENCE); we keep the stated rule.
    totalseg = [e for e in entries if e.folder == "ct_mr_totalseg_example"]
    assert counts["ct_mr_totalseg_example"] == sum(len(e.raw["labels_present"]) for e in totalseg) == 61 + 41 + 23


def test_rows_outside_the_reference_are_separate(by_dataset):
    assert {"ct_deeplesion_medsam2_hu", "mr_pyradiomics_phantom", "ct_dcmqi_3slice"} <= set(by_dataset)
    assert all(e.image_name.endswith(".npz") for e, _, _ in by_dataset["ct_deeplesion_medsam2"])
    assert "fundus_drive" not in by_dataset


def test_boxes_are_tight_around_the_target_mask(by_dataset):
    for name in ("ct_2d_btcv_imis", "mr_la_heart", "micro_em_isbi2012", "xray_lung_cc", "ct_deeplesion_medsam2"):
        for entry, label, target in by_dataset[name][:5]:
            mask = target.mask(label)
            assert mask.any()
            coords = np.nonzero(mask)
            if entry.dim == "3D":
                assert isinstance(target.box, Box3D)
                z, y, x = coords
                assert (target.box.z0, target.box.z1) == (z.min(), z.max())
            else:
                assert isinstance(target.box, Box) and target.box.z is None
                y, x = coords
            assert (target.box.x0, target.box.y0, target.box.x1, target.box.y1) == (x.min(), y.min(), x.max(), y.max())


def test_xray_whole_box_covers_both_lung_boxes(by_dataset):
    lungs = {e.image_name: t for e, _, t in by_dataset["xray_lung"]}
    per_lung = defaultdict(list)
    for entry, label, target in by_dataset["xray_lung_cc"]:
        per_lung[entry.image_name].append((label, target))
    assert set(per_lung) == set(lungs) and all(len(v) == 2 for v in per_lung.values())
    for image, pair in per_lung.items():
        label = pair[0][0]
        both = pair[0][1].mask(label) | pair[1][1].mask(label)
        assert np.array_equal(both, label > 0)  # the two components are the whole lung mask
        whole = lungs[image].box
        assert whole.x0 == min(t.box.x0 for _, t in pair) and whole.x1 == max(t.box.x1 for _, t in pair)


def test_em_targets_are_large_4_connected_cells(by_dataset):
    cross = ndimage.generate_binary_structure(2, 1)
    per_image = Counter()
    for entry, label, target in by_dataset["micro_em_isbi2012"]:
        mask = target.mask(label)
        assert mask.sum() >= 100
        assert ndimage.label(mask, structure=cross)[1] == 1
        assert (label[mask] > 127).all()
        per_image[entry.image_name] += 1
    assert sorted(per_image.values()) == [100, 100, 100]


def test_instance_sampling_is_seeded_and_configurable(entries):
    entry = next(e for e in entries if e.folder == "micro_dsb2018_stardist")
    label = load_label(entry)
    first = [t.name for t in targets(entry, label)]
    assert first == [t.name for t in targets(entry, label)]
    assert first != [t.name for t in targets(entry, label, seed=1)]
    every = targets(entry, label, instances_per_image={"micro_dsb2018_stardist": None})
    assert len(every) == len(np.unique(label)) - 1 == 125
    assert all(t.mask(label).sum() == (label == int(t.name.split()[1])).sum() for t in every[:10])


def test_label_kinds_names_and_modalities(entries, by_dataset):
    kinds = {e.folder: e.gt_kind for e in entries}
    assert kinds["ct_mr_totalseg_example"] == MODEL_GENERATED
    assert kinds["mr_brain_voxelmorph"] == MODEL_GENERATED and kinds["mr_mni152_nilearn"] == MODEL_GENERATED
    assert kinds["ct_2d_btcv_imis"] == MANUAL and kinds["ct_deeplesion_medsam2"] == MANUAL
    names = [t.name for _, _, t in by_dataset["ct_2d_btcv_imis"]]
    assert "6:liver" in names and "1:spleen" in names
    modalities = {e.modality_class for e in entries}
    assert {"CT", "MR", "X-ray", "Ultrasound", "Microscopy", "Pathology"} <= modalities


def test_images_and_labels_share_the_grid(cases):
    for entry, image, label, _ in cases:
        if entry.dim == "3D":
            assert image.is_volume and image.array.shape == label.shape
            assert all(s > 0 for s in image.spacing)
        else:
            assert image.array.shape[:2] == label.shape
    deeplesion = next(i for e, i, _, _ in cases if e.image_name.endswith("081-093.npz"))
    assert deeplesion.spacing == pytest.approx((0.9375, 0.9375, 5.0))


def test_dataset_selection(entries):
    assert {e.folder for e in select(entries, ["xray_lung_cc"])} == {"xray_lung"}
    assert len(select(entries, ["ct_deeplesion_medsam2"])) == 3
    with pytest.raises(ManifestError, match="unknown dataset"):
        select(entries, ["no_such_set"])


def test_bad_manifests_raise_clear_errors(tmp_path: Path, manifest_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(bad)
    bad.write_text(json.dumps([{"dim": "4D", "modality": "CT", "image": "a.nii", "label": "b.nii"}]))
    with pytest.raises(ManifestError, match="dim"):
        read_manifest(bad)
    bad.write_text(json.dumps([{"dim": "2D", "modality": "CT", "image": "x/a.png", "label": "x/b.png"}]))
    with pytest.raises(ManifestError, match="does not exist"):
        load_image(read_manifest(bad)[0])
    with pytest.raises(ValueError, match="empty"):
        tight_box(np.zeros((4, 4), dtype=bool))


def test_mismatched_label_grid_is_refused(tmp_path: Path, manifest_path):
    rows = json.loads(manifest_path.read_text(encoding="utf-8"))
    row = next(r for r in rows if r["image"].startswith("us_hc18"))
    other = next(r for r in rows if r["image"].startswith("xray_lung"))
    data = manifest_path.parent
    (tmp_path / "us_hc18").mkdir()
    (tmp_path / "us_hc18" / "image.png").symlink_to(data / row["image"])
    (tmp_path / "us_hc18" / "label.png").symlink_to(data / other["label"])  # a 512x512 mask for a 540x800 image
    mixed = tmp_path / "manifest.json"
    mixed.write_text(json.dumps([dict(row, image="us_hc18/image.png", label="us_hc18/label.png")]))
    with pytest.raises(ImageError, match="does not match"):
        list(iter_cases(read_manifest(mixed)))
