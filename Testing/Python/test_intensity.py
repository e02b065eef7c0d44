"""The uint8 rule: which rule each real image gets, and bit-exact agreement with the CVPR24 MedSAM pre-processing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from FastMedSAMLib.errors import ImageError
from FastMedSAMLib.io.images import Image, read_image
from FastMedSAMLib.io.intensity import intensity_rule, is_ct, to_uint8


def cvpr24_ct(volume: np.ndarray, lo: float = -160.0, hi: float = 240.0) -> np.ndarray:
    """The CVPR24 MedSAM CT pre-processing (window level 40, width 400), written as in the official script."""
    clipped = np.clip(volume, lo, hi)
    scaled = (clipped - np.min(clipped)) / (np.max(clipped) - np.min(clipped)) * 255.0
    return np.uint8(scaled)


def cvpr24_mr(volume: np.ndarray, positive_only: bool = True) -> np.ndarray:
    """The CVPR24 MedSAM MR pre-processing: 0.5/99.5 percentiles of the voxels > 0, zeros kept at 0."""
    values = volume[volume > 0] if positive_only else volume
    lo, hi = np.percentile(values, 0.5), np.percentile(values, 99.5)
    clipped = np.clip(volume, lo, hi)
    scaled = (clipped - np.min(clipped)) / (np.max(clipped) - np.min(clipped)) * 255.0
    if positive_only:
        scaled[volume == 0] = 0
    return np.uint8(scaled)


CASES = [
    # file, modality hint (as the manifest states it, or None), expected rule
    ("ct_mr_totalseg_example/example_ct_sm.nii.gz", None, "ct_window"),
    ("ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115_HU.nii.gz", None, "ct_window"),
    ("ct_dcmqi_3slice/ct_3slice.nii.gz", None, "ct_window"),
    ("ct_mr_totalseg_example/example_mr_sm.nii.gz", None, "percentile_positive"),  # int16 MR, min -47: not CT
    ("ct_mr_totalseg_example/example_mr_sm.nii.gz", "MR", "percentile_positive"),  # 1.3% ringing < 0: not z-scored
    ("mr_la_heart/LA_06SR5RBREL16DQ6M8LWS_img.nii.gz", "MR (LGE)", "percentile_all"),  # z-scored float
    ("mr_pyradiomics/brain1_image.nrrd", None, "percentile_positive"),
    ("mr_pyradiomics/prostate_phantom_subvolume.nrrd", None, "percentile_positive"),  # uint16
    ("micro_dsb2018_stardist/img2d.tif", None, "percentile_positive"),  # uint16 microscopy
    ("mr_brain_voxelmorph/brain_t1_img.nii.gz", None, "as_stored"),  # uint8 MR
    ("ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115.npz", "CT", "as_stored"),  # already windowed
    ("ct_2d_btcv_imis/images/ABD_001_120.png", "CT (2D slice)", "as_stored"),
    ("derm_ham10000/images/ISIC_0024311.jpg", None, "as_stored"),
]


def with_hint(image: Image, hint):
    return Image(image.array, image.spacing, image.origin, image.direction, modality_hint=hint)


@pytest.mark.parametrize("name, hint, rule", CASES, ids=[f"{Path(c[0]).stem}-{c[1]}" for c in CASES])
def test_real_images_get_the_reference_rule_and_values(data_dir: Path, name: str, hint, rule: str):
    image = with_hint(read_image(data_dir / name), hint)
    assert intensity_rule(image) == rule
    out = to_uint8(image)
    assert out.dtype == np.uint8 and out.shape == image.array.shape
    expected = {
        "ct_window": lambda a: cvpr24_ct(a),
        "percentile_positive": lambda a: cvpr24_mr(a),
        "percentile_all": lambda a: cvpr24_mr(a, positive_only=False),
        "as_stored": lambda a: a,
    }[rule](image.array)
    np.testing.assert_array_equal(out, expected)
    if rule != "as_stored":
        assert out.min() == 0 and out.max() == 255


def test_ct_window_override_and_window_on_uint8(data_dir: Path):
    ct = read_image(data_dir / "ct_mr_totalseg_example/example_ct_sm.nii.gz")
    assert intensity_rule(ct, window=(-1000, 1000)) == "window"
    np.testing.assert_array_equal(to_uint8(ct, window=(-1000, 1000)), cvpr24_ct(ct.array, -1000.0, 1000.0))
    assert not np.array_equal(to_uint8(ct, window=(-1000, 1000)), to_uint8(ct))
    grey = read_image(data_dir / "xray_lung/cxr/CHNCXR_0001_0.png")
    np.testing.assert_array_equal(to_uint8(grey, window=(50, 200)), cvpr24_ct(grey.array, 50.0, 200.0))
    for bad in ((240, -160), (0, 0), (0, np.inf), ("a", 1), (1,)):
        with pytest.raises(ImageError, match="window"):
            to_uint8(ct, window=bad)


def test_modality_hint_decides_over_the_values(data_dir: Path):
    ct = read_image(data_dir / "ct_mr_totalseg_example/example_ct_sm.nii.gz")
    mr = read_image(data_dir / "mr_pyradiomics/brain1_image.nrrd")
    assert is_ct(ct) and not is_ct(with_hint(ct, "MR")) and intensity_rule(with_hint(ct, "MR")) == "percentile_all"
    assert not is_ct(mr) and is_ct(with_hint(mr, "CT")) and is_ct(with_hint(mr, "ct"))
    np.testing.assert_array_equal(to_uint8(with_hint(mr, "CT")), cvpr24_ct(mr.array))


def test_float_ct_is_recognised_and_small_negatives_are_not_ct():
    hu = np.array([[[-1024.0, -300.0], [40.0, 1200.0]]] * 2, dtype=np.float32)
    assert intensity_rule(Image.from_array(hu)) == "ct_window"
    np.testing.assert_array_equal(to_uint8(Image.from_array(hu)), cvpr24_ct(hu))
    assert intensity_rule(Image.from_array((hu / 1000).astype(np.float32))) == "percentile_all"
    assert intensity_rule(Image.from_array(np.array([[-499, 3], [7, 900]], dtype=np.int16))) == "percentile_all"
    ringing = np.arange(100, dtype=np.int16).reshape(10, 10)
    ringing[0, :3] = -40  # 3% negative: interpolation artefacts, not a z-scored image
    assert intensity_rule(Image.from_array(ringing)) == "percentile_positive"


def test_zeros_stay_zero_and_rgb_and_constant_images():
    volume = np.zeros((3, 8, 8), dtype=np.uint16)
    volume[:, 2:6, 2:6] = np.arange(48, dtype=np.uint16).reshape(3, 4, 4) + 100
    out = to_uint8(Image.from_array(volume))
    assert (out[volume == 0] == 0).all() and out.max() == 255 and out.shape == volume.shape
    rgb = np.random.default_rng(0).uniform(0, 4000, size=(5, 6, 3)).astype(np.float32)
    out = to_uint8(Image.from_array(rgb))
    np.testing.assert_array_equal(out, cvpr24_mr(rgb))
    assert out.shape == (5, 6, 3)
    assert not to_uint8(Image.from_array(np.full((4, 4), 7, dtype=np.int16))).any()
    assert not to_uint8(Image.from_array(np.zeros((4, 4), dtype=np.float32))).any()
    mask_like = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(to_uint8(Image.from_array(mask_like)), mask_like * 255)


def test_uint8_passes_through_unchanged():
    array = np.random.default_rng(1).integers(0, 256, size=(2, 5, 5), dtype=np.uint8)
    image = Image.from_array(array, modality="CT")
    assert to_uint8(image) is image.array
