"""DSC and NSD on masks with answers worked out by hand, and on real ground-truth masks."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from FastMedSAMLib.evaluation.metrics import boundary, boundary_measure_table, dice, normalized_surface_distance, score
from FastMedSAMLib.io.manifest import load_label, read_manifest


def square(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return mask


def test_shifted_square_with_anisotropic_spacing():
    # 10x10 squares, the prediction 3 columns right; rows 1.0 mm apart, columns 0.5 mm, tolerance 1 mm.
    truth = square((30, 30), (10, 19), (10, 19))
    prediction = square((30, 30), (10, 19), (13, 22))
    assert dice(prediction, truth) == pytest.approx(2 * 70 / 200)  # overlap 10 rows x 7 columns
    # Boundaries on the corner grid: per square 9 + 9 top/bottom corners holding 0.5 mm of contour each, 9 + 9
    # side corners holding 1 mm, 4 square corners holding a corner cut d = hypot(0.5, 0.25): 27 + 4d in all.
    # Close to the other square: all top/bottom edge corners (at most 1 mm along the row), the two near corners
    # (on the other's top/bottom edge), and the two near-side corners next to them (1 mm from the other's
    # top/bottom edge); the far side is 1.5 mm away: 9 + 2 + 2d. The truth mirrors the prediction.
    d = np.hypot(0.5, 0.25)
    expected = (11 + 2 * d) / (27 + 4 * d)
    assert normalized_surface_distance(prediction, truth, 1.0, spacing=(1.0, 0.5)) == pytest.approx(expected)
    # In pixels (tolerance 1 px) the shift is 3: top/bottom keep 8 corners each (holding 1 px), the near side 2,
    # the near square corners 2 cuts of hypot(0.5, 0.5): (18 + 2d) / (36 + 4d) = 1/2.
    assert normalized_surface_distance(prediction, truth, 1.0) == pytest.approx(0.5)


def test_boundary_lengths_and_areas():
    dot = np.zeros((3, 3), dtype=bool)
    dot[1, 1] = True
    on, length = boundary(dot, (1.0, 1.0))
    assert on.sum() == 4 and length[on].sum() == pytest.approx(4 * np.hypot(0.5, 0.5))  # a diamond
    voxel = np.zeros((3, 3, 3), dtype=bool)
    voxel[1, 1, 1] = True
    on, area = boundary(voxel, (1.0, 1.0, 1.0))
    assert on.sum() == 8 and area[on].sum() == pytest.approx(np.sqrt(3))  # an octahedron
    table = boundary_measure_table((1.0, 2.0, 3.0))
    assert table[0b11110000] == pytest.approx(2.0 * 3.0)  # half the cell inside along axis 0: a plane of s1 * s2
    assert table[0b11001100] == pytest.approx(1.0 * 3.0)  # along axis 1
    assert table[0] == 0 and table[255] == 0
    with pytest.raises(ValueError, match="2D and 3D"):
        boundary_measure_table((1.0,) * 4)


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
    prediction = square((20, 20), (5, 14), (6, 15))  # one column right
    # without spacing the tolerance is 1 px: every boundary corner is at most 1 px from the other boundary
    assert score(prediction, truth) == (pytest.approx(0.9), pytest.approx(1.0))
    # 3D: 2 mm. One column of 1.5 mm stays within it; with 3 mm columns the boundary parts that moved are too far
    for x_spacing, close in ((1.5, True), (3.0, False)):
        dsc, nsd = score(prediction[None], truth[None], spacing=(1.0, 1.0, x_spacing))
        assert dsc == pytest.approx(0.9)
        assert (nsd == pytest.approx(1.0)) is close and nsd > 0.8


def test_cuboid_grown_through_plane():
    # truth: 3 slices of 4x4; prediction: the same grown by one slice above and below; slices 5 mm apart, 1 mm px.
    truth = np.zeros((8, 8, 8), dtype=bool)
    truth[2:5, 2:6, 2:6] = True
    grown = np.zeros_like(truth)
    grown[1:6, 2:6, 2:6] = True
    # Boundary pieces (marching cubes, area vectors scaled by (sy*sx, sz*sx, sz*sy) = (1, 5, 5)): box vertex
    # sqrt(51)/8; edge along x or y sqrt(104)/4; edge along z sqrt(200)/4; face interior 1 (z faces) or 5 (sides).
    vertex, edge_xy, edge_z = np.sqrt(51) / 8, np.sqrt(104) / 4, np.sqrt(200) / 4
    truth_total = 8 * vertex + 24 * edge_xy + 8 * edge_z + 18 * 1 + 24 * 5
    grown_total = 8 * vertex + 24 * edge_xy + 16 * edge_z + 18 * 1 + 48 * 5
    # the grown caps are 5 mm from the truth; its side walls lie on the truth's boundary (z = 2..5 corner planes)
    grown_close = 16 * edge_z + 48 * 5
    # every truth corner is on or within 2 mm of the grown side walls (cap centres exactly 2 mm)
    spacing = (5.0, 1.0, 1.0)
    assert normalized_surface_distance(grown, truth, 2.0, spacing) == pytest.approx(
        (grown_close + truth_total) / (grown_total + truth_total))
    assert normalized_surface_distance(grown, truth, 1.5, spacing) == pytest.approx(
        (grown_close + truth_total - 2) / (grown_total + truth_total))
    assert dice(grown, truth) == pytest.approx(2 * 48 / (48 + 80))


@pytest.fixture(scope="module")
def entries(manifest_path):
    return read_manifest(manifest_path)


def _entry(entries, image_name):
    return next(e for e in entries if e.image_name == image_name)


def shared_fraction(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """NSD below the grid step: only boundary corners the two masks share are close (distance 0)."""
    (on_a, w_a), (on_b, w_b) = boundary(a, spacing), boundary(b, spacing)
    shared = on_a & on_b
    return (w_a[shared].sum() + w_b[shared].sum()) / (w_a[on_a].sum() + w_b[on_b].sum())


def test_real_gt_against_itself_and_its_dilation_2d(entries):
    label = load_label(_entry(entries, "xray_lung/cxr/CHNCXR_0001_0.png")) > 0
    assert dice(label, label) == 1.0
    assert normalized_surface_distance(label, label, 1.0) == 1.0
    grown = ndimage.binary_dilation(label, structure=ndimage.generate_binary_structure(2, 1))
    # the contour moves out by one pixel: everything within the 1 px tolerance
    assert normalized_surface_distance(grown, label, 1.0) == pytest.approx(1.0)
    below = normalized_surface_distance(grown, label, 0.99)
    assert below == pytest.approx(shared_fraction(grown, label, (1.0, 1.0))) and below < 0.2
    assert dice(grown, label) == pytest.approx(2 * label.sum() / (label.sum() + grown.sum()))


def test_real_gt_dilation_3d_in_mm(entries):
    entry = _entry(entries, "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_081-093.npz")
    label = load_label(entry) > 0
    spacing = (5.0, 0.9375, 0.9375)  # (z, y, x) of the npz spacing (0.9375, 0.9375, 5.0)
    assert score(label, label, spacing) == (1.0, 1.0)
    in_plane = ndimage.binary_dilation(label, structure=ndimage.generate_binary_structure(3, 1) * [[[0]], [[1]], [[0]]])
    # a 1-voxel in-plane dilation moves the surface 0.9375 mm: within 2 mm everywhere
    assert normalized_surface_distance(in_plane, label, 2.0, spacing) == pytest.approx(1.0)
    # below one pixel only the boundary the two masks share (inside the first and last slices' caps) counts
    below = normalized_surface_distance(in_plane, label, 0.9, spacing)
    assert below == pytest.approx(shared_fraction(in_plane, label, spacing)) and 0.0 < below < 0.9
