"""DSC and NSD on masks with answers worked out by hand, and on real ground-truth masks."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from FastMedSAMLib.manifest import load_label, read_manifest
from FastMedSAMLib.metrics import dice, normalized_surface_distance, score, surface


def square(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return mask


def test_shifted_square_with_anisotropic_spacing():
    # 10x10 squares, the prediction 3 columns right; rows 1.0 mm apart, columns 0.5 mm, tolerance 1 mm.
    truth = square((30, 30), (10, 19), (10, 19))
    prediction = square((30, 30), (10, 19), (13, 22))
    # overlap 10 rows x 7 columns
    assert dice(prediction, truth) == pytest.approx(2 * 70 / 200)
    # Each square has 36 surface pixels. Of the prediction's: top and bottom rows 9 each (columns 13..21 lie within
    # 1 mm of the truth's top/bottom rows, column 22 is 1.5 mm from column 19), left column 2 (rows 11 and 18 are
    # 1 mm from the truth's top/bottom rows, the others 1.5 mm from column 10), right column 0: 20. By symmetry the
    # truth also has 20 close pixels: NSD = 40 / 72.
    assert normalized_surface_distance(prediction, truth, 1.0, spacing=(1.0, 0.5)) == pytest.approx(40 / 72)
    # In pixels (tolerance 1 px) the shift is 3: top/bottom rows keep 8 each (column 21 is now 2 away) and the
    # left column 2: (8 + 8 + 2) * 2 / 72.
    assert normalized_surface_distance(prediction, truth, 1.0) == pytest.approx(36 / 72)


def test_surface_counts_array_edge_and_face_neighbours():
    mask = np.ones((4, 5), dtype=bool)
    assert surface(mask).sum() == 4 * 5 - 2 * 3  # all but the 2x3 interior
    cube = np.zeros((5, 5, 5), dtype=bool)
    cube[1:4, 1:4, 1:4] = True
    assert surface(cube).sum() == 27 - 1


def test_empty_mask_conventions():
    empty = np.zeros((8, 8), dtype=bool)
    full = square((8, 8), (2, 5), (2, 5))
    assert dice(empty, empty) == 1.0
    assert normalized_surface_distance(empty, empty, 1.0) == 1.0
    assert dice(full, empty) == 0.0 and dice(empty, full) == 0.0
    assert normalized_surface_distance(full, empty, 1.0) == 0.0
    assert normalized_surface_distance(empty, full, 1.0) == 0.0


def test_disjoint_masks_and_bad_input():
    a = square((20, 20), (0, 3), (0, 3))
    b = square((20, 20), (10, 13), (10, 13))
    assert dice(a, b) == 0.0
    assert normalized_surface_distance(a, b, 2.0) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:10])
    with pytest.raises(ValueError, match="spacing"):
        normalized_surface_distance(a, b, 1.0, spacing=(1.0, 1.0, 1.0))


def test_score_uses_protocol_tolerances():
    truth = square((20, 20), (5, 14), (5, 14))
    prediction = square((20, 20), (5, 14), (6, 15))  # one column right: surfaces 1 unit apart
    # without spacing the tolerance is 1 px: every surface pixel is at most 1 px from the other surface
    assert score(prediction, truth) == (pytest.approx(0.9), pytest.approx(1.0))
    # a one-slice volume is all surface (above and below lie outside): per mask 90 voxels overlap and the tenth
    # column is one column from the other mask, which is 1.5 mm (within 2 mm) or 3 mm (beyond) at these spacings
    assert score(prediction[None], truth[None], spacing=(1.0, 1.0, 1.5)) == (pytest.approx(0.9), pytest.approx(1.0))
    assert score(prediction[None], truth[None], spacing=(1.0, 1.0, 3.0)) == (pytest.approx(0.9), pytest.approx(0.9))


def test_cuboid_grown_through_plane():
    # truth: 3 slices of 4x4; prediction: the same grown by one slice above and below; slices 5 mm apart, 1 mm px.
    truth = np.zeros((7, 8, 8), dtype=bool)
    truth[2:5, 2:6, 2:6] = True
    grown = np.zeros_like(truth)
    grown[1:6, 2:6, 2:6] = True
    # surfaces: truth 16 + 16 (caps) + 12 (middle ring) = 44; grown 16 + 16 + 3 * 12 = 68. The grown caps (32) are
    # 5 mm from the truth; its rings coincide with truth surface voxels. Truth: cap rings and middle ring coincide
    # with grown rings; the 2x2 cap interiors (8 voxels) are 1 mm from a grown ring.
    spacing = (5.0, 1.0, 1.0)
    assert normalized_surface_distance(grown, truth, 2.0, spacing) == pytest.approx((36 + 44) / 112)
    assert normalized_surface_distance(grown, truth, 0.5, spacing) == pytest.approx((36 + 36) / 112)
    assert dice(grown, truth) == pytest.approx(2 * 48 / (48 + 80))


@pytest.fixture(scope="module")
def entries(manifest_path):
    return read_manifest(manifest_path)


def _entry(entries, image_name):
    return next(e for e in entries if e.image_name == image_name)


def test_real_gt_against_itself_and_its_dilation_2d(entries):
    label = load_label(_entry(entries, "xray_lung/cxr/CHNCXR_0001_0.png")) > 0
    assert dice(label, label) == 1.0
    assert normalized_surface_distance(label, label, 1.0) == 1.0
    grown = ndimage.binary_dilation(label, structure=ndimage.generate_binary_structure(2, 1))
    # every new surface pixel is a face neighbour of an old one: exactly 1 px apart, never closer
    assert normalized_surface_distance(grown, label, 1.0) == pytest.approx(1.0)
    assert normalized_surface_distance(grown, label, 0.99) == 0.0
    assert dice(grown, label) == pytest.approx(2 * label.sum() / (label.sum() + grown.sum()))


def test_real_gt_dilation_3d_in_mm(entries):
    entry = _entry(entries, "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_081-093.npz")
    label = load_label(entry) > 0
    spacing = (5.0, 0.9375, 0.9375)  # (z, y, x) of the npz spacing (0.9375, 0.9375, 5.0)
    assert score(label, label, spacing) == (1.0, 1.0)
    in_plane = ndimage.binary_dilation(label, structure=ndimage.generate_binary_structure(3, 1) * [[[0]], [[1]], [[0]]])
    # a 1-voxel in-plane dilation moves the surface 0.9375 mm: within 2 mm everywhere
    assert normalized_surface_distance(in_plane, label, 2.0, spacing) == pytest.approx(1.0)
    # below one pixel (0.9375 mm) only the surface voxels the two masks share (on the first and last slices) count
    shared = (surface(in_plane) & surface(label)).sum()
    assert 0 < shared < surface(label).sum()
    expected = 2 * shared / (surface(in_plane).sum() + surface(label).sum())
    assert normalized_surface_distance(in_plane, label, 0.9, spacing) == pytest.approx(expected)
