"""`fastmedsam segment` end to end on a real CT: world-space (RAS) and index-space boxes give the same mask, written
with the input's exact geometry."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from FastMedSAMLib.cli import main
from FastMedSAMLib.evaluation.metrics import dice
from FastMedSAMLib.io.geometry import index_to_ras
from FastMedSAMLib.io.images import read_image, read_label

# A non-identity direction (axes swapped and flipped) and anisotropic spacing, so that any confusion of index,
# LPS and RAS moves the box.
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SPACING = (0.7, 0.9, 2.5)


@pytest.fixture(scope="module")
def liver_case(data_dir, tmp_path_factory, litemedsam_checkpoint):
    folder = tmp_path_factory.mktemp("cli")
    image = sitk.ReadImage(str(data_dir / "ct_dcmqi_3slice" / "ct_3slice.nii.gz"))
    label = sitk.ReadImage(str(data_dir / "ct_dcmqi_3slice" / "labels_liver1_spine2_heart3.nii.gz"))
    for item in (image, label):
        item.SetDirection(DIRECTION)
        item.SetSpacing(SPACING)
        item.SetOrigin((12.5, -40.0, 7.0))
    sitk.WriteImage(image, str(folder / "ct.nrrd"))
    liver = sitk.GetArrayFromImage(label) == 1
    return folder, liver


def box_of(mask: np.ndarray):
    z, y, x = np.nonzero(mask)
    return (x.min(), y.min(), z.min()), (x.max(), y.max(), z.max())


def test_segment_world_box_matches_index_box_and_keeps_geometry(liver_case, capsys):
    folder, liver = liver_case
    low, high = box_of(liver)
    ras = index_to_ras(read_image(folder / "ct.nrrd"), np.array([low, high], dtype=float))
    assert main(["segment", str(folder / "ct.nrrd"), "--box3d", *map(str, (*low, *high)), "--out", str(folder / "ijk.nii.gz")]) == 0
    printed = capsys.readouterr().out
    assert "encode" in printed and "decode" in printed and "total" in printed
    world = [f"{v:.6f}" for v in ras.ravel()]
    out = folder / "ras.seg.nrrd"
    assert main(["segment", str(folder / "ct.nrrd"), "--box3d", *world, "--space", "ras", "--out", str(out)]) == 0

    by_index, by_world = read_label(folder / "ijk.nii.gz"), read_label(out)
    np.testing.assert_array_equal(by_index.array > 0, by_world.array > 0)
    for written in (by_index, by_world):
        np.testing.assert_allclose(written.spacing, SPACING, atol=1e-6)
        np.testing.assert_allclose(written.direction.ravel(), DIRECTION, atol=1e-9)
        np.testing.assert_allclose(written.origin, (12.5, -40.0, 7.0), atol=1e-6)
    assert dice(by_world.array > 0, liver) > 0.85


def test_segment_2d_box_on_one_slice(liver_case):
    folder, liver = liver_case
    z, y, x = np.nonzero(liver[1:2])
    out = folder / "slice.nii.gz"
    assert main(["segment", str(folder / "ct.nrrd"), "--box", *map(str, (x.min(), y.min(), x.max(), y.max(), 1)), "--out", str(out)]) == 0
    mask = read_label(out).array > 0
    assert not mask[0].any() and not mask[2].any()
    assert dice(mask[1], liver[1]) > 0.85


def test_bad_prompt_is_a_clear_error_and_writes_nothing(liver_case, capsys):
    folder, _ = liver_case
    out = folder / "never.nii.gz"
    assert main(["segment", str(folder / "ct.nrrd"), "--box", "50", "50", "10", "10", "1", "--out", str(out)]) == 2
    assert "inverted" in capsys.readouterr().err
    assert not out.exists()
