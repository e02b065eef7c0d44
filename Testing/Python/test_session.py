"""The Session on real images with the real LiteMedSAM weights: Dice against ground truth, cache behaviour,
and a clear error for every kind of bad input."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from FastMedSAMLib import Box, Box3D, Point, Session
from FastMedSAMLib.errors import ImageError, PromptError
from FastMedSAMLib.evaluation.metrics import dice
from FastMedSAMLib.io.images import read_image, read_label


def tight_box(mask: np.ndarray, z=None) -> Box:
    ys, xs = np.nonzero(mask)
    return Box(xs.min(), ys.min(), xs.max(), ys.max(), z=z)


@pytest.fixture(scope="module")
def session(litemedsam_checkpoint) -> Session:
    return Session(model="litemedsam", device="cpu")


@pytest.fixture(scope="module")
def lesion(data_dir):
    """A 13-slice DeepLesion CT (CVPR24 npz, windowed uint8) and its lesion mask."""
    path = data_dir / "ct_deeplesion_medsam2" / "CT_Lesion_000015_01_01_103-115.npz"
    return read_image(path), read_label(f"{path}::gts").array > 0


def test_2d_box_on_xray_matches_ground_truth(session, data_dir):
    image = read_image(data_dir / "xray_lung" / "cxr" / "CHNCXR_0001_0.png")
    gt = read_label(data_dir / "xray_lung" / "masks_bin" / "CHNCXR_0001_0.png").array > 0
    session.set_image(image)
    prediction = session.predict(box=tight_box(gt))
    assert prediction.mask.shape == gt.shape
    assert prediction.slice_index is None
    assert dice(prediction.mask, gt) > 0.9
    assert set(prediction.timings) == {"preprocess", "encode", "decode", "postprocess", "total"}


def test_second_prompt_on_a_slice_costs_only_the_decoder(session, lesion):
    image, gt = lesion
    session.set_image(image)
    z = int(np.argmax(gt.sum(axis=(1, 2))))
    first = session.predict(box=tight_box(gt[z], z=z))
    hits = session.cache_info()["hits"]
    second = session.predict(box=tight_box(gt[z], z=z))
    assert first.encoder_calls == 1 and first.timings["encode"] > 0
    assert second.encoder_calls == 0 and second.timings["encode"] == 0.0
    assert session.cache_info()["hits"] == hits + 1
    np.testing.assert_array_equal(first.mask, second.mask)
    assert dice(first.mask, gt[z]) > 0.8


def test_3d_box_propagates_and_reuses_cached_slices(session, lesion):
    image, gt = lesion
    session.set_image(image)
    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    plane = tight_box(gt.any(axis=0))
    box = Box3D(plane.x0, plane.y0, int(zs.min()), plane.x1, plane.y1, int(zs.max()))
    # cache keys are (encoder tag: the runtime's, or the pause knob's, (image key, slice))
    cached_before = sum((session._engine.encoder_tag, (session._image_key, z)) in session.cache for z in range(zs.min(), zs.max() + 1))
    prediction = session.predict(box=box)
    assert prediction.mask.shape == gt.shape
    assert prediction.z_range == (int(zs.min()), int(zs.max()))
    assert prediction.encoder_calls == len(zs) - cached_before
    assert not prediction.mask[: zs.min()].any() and not prediction.mask[zs.max() + 1 :].any()
    assert dice(prediction.mask, gt) > 0.75
    again = session.predict(box=box)
    assert again.encoder_calls == 0
    np.testing.assert_array_equal(again.mask, prediction.mask)


def test_array_input_with_spacing_equals_file_input(session, lesion):
    image, gt = lesion
    z = int(np.argmax(gt.sum(axis=(1, 2))))
    session.set_image(image.array, spacing=image.spacing)
    from_array = session.predict(box=tight_box(gt[z], z=z)).mask
    session.set_image(image)
    np.testing.assert_array_equal(from_array, session.predict(box=tight_box(gt[z], z=z)).mask)


@pytest.mark.parametrize(
    "box, message",
    [
        (Box(600, 600, 700, 700, z=5), "outside"),
        (Box(10, 10, 10, 10, z=5), "degenerate"),
        (Box(10, 10, 50, 50, z=99), "slice"),
        (Box(10, 10, 50, 50), "needs its slice"),
        (Box3D(10, 10, 40, 50, 50, 60), "outside the volume"),
    ],
)
def test_bad_boxes_are_refused_clearly(session, lesion, box, message):
    session.set_image(lesion[0])
    with pytest.raises(PromptError, match=message):
        session.predict(box=box)


def test_inverted_box_is_refused_at_construction():
    with pytest.raises(PromptError, match="inverted"):
        Box(50, 10, 10, 50)
    with pytest.raises(PromptError, match="inverted"):
        Box3D(0, 0, 5, 10, 10, 2)


def test_points_for_a_box_only_model(session, lesion):
    image, gt = lesion
    session.set_image(image)
    z = int(np.argmax(gt.sum(axis=(1, 2))))
    box = tight_box(gt[z], z=z)
    corners = [Point(box.x0, box.y0, z), Point(box.x1, box.y1, z)]
    with pytest.raises(PromptError, match="box-only"):
        session.predict(points=corners)
    explicit = Session(model="litemedsam", device="cpu", points_as_box=True)
    explicit.set_image(image)
    np.testing.assert_array_equal(explicit.predict(points=corners).mask, session.predict(box=box).mask)
    with pytest.raises(PromptError, match="outside"):
        explicit.predict(points=[Point(5000, 5, z), Point(10, 10, z)])


def test_mask_prompt_refused_for_box_only_model(session, lesion):
    session.set_image(lesion[0])
    with pytest.raises(PromptError, match="mask prompt"):
        session.predict(box=Box(10, 10, 50, 50, z=3), mask=np.zeros((512, 512), bool))


def test_predict_before_set_image():
    s = Session.__new__(Session)
    s._u8 = None
    with pytest.raises(PromptError, match="set_image"):
        s.predict(box=Box(0, 0, 5, 5))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((4, 32, 32), np.nan, dtype=np.float32), "NaN"),
        (np.array([[[0.0, np.inf]]], dtype=np.float32).repeat(8, 1), "Inf"),
        (np.zeros((2, 3, 16, 16), dtype=np.int16), "4D"),
        (np.zeros((0, 16), dtype=np.uint8), "empty"),
    ],
)
def test_bad_images_are_refused_and_keep_the_previous_image(session, lesion, array, message):
    session.set_image(lesion[0])
    with pytest.raises(ImageError, match=message):
        session.set_image(array)
    assert session.image is lesion[0]


def test_unreadable_file(session, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageError):
        session.set_image(bad)


def test_single_slice_volume(session, data_dir):
    """A 1-voxel-thick volume (a single DICOM-like slice) is segmented like a 2D image on slice 0."""
    label = read_label(data_dir / "ct_dcmqi_3slice" / "labels_liver1_spine2_heart3.nii.gz").array
    image = read_image(data_dir / "ct_dcmqi_3slice" / "ct_3slice.nii.gz")
    one = sitk.GetImageFromArray(image.array[1:2])
    one.SetSpacing(image.spacing)
    session.set_image(sitk.GetArrayFromImage(one), spacing=image.spacing, modality="CT")
    liver = label[1] == 1
    prediction = session.predict(box=tight_box(liver, z=0))
    assert dice(prediction.mask, liver) > 0.8
