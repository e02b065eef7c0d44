"""Image reading, mask writing and their geometry: round trips, the real data of the manifest, DICOM, bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from FastMedSAMLib.errors import ImageError
from FastMedSAMLib.io.geometry import ijk_to_ras_matrix
from FastMedSAMLib.io.images import Image, read_image, read_label, write_mask


def rotation(axis, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


OBLIQUE = rotation((0.3, -0.5, 0.8), 0.7)
SPACING = (0.7, 1.3, 3.1)
ORIGIN = (-12.25, 40.5, 7.75)
FLOAT32_TOLERANCE = 1e-5  # NIfTI stores geometry as float32


def sitk_geometry(image: sitk.Image):
    return np.array(image.GetSpacing()), np.array(image.GetOrigin()), np.array(image.GetDirection()).reshape(3, 3)


def assert_geometry(image: Image, spacing, origin, direction, atol: float) -> None:
    np.testing.assert_allclose(image.spacing, spacing, rtol=0, atol=atol)
    np.testing.assert_allclose(image.origin, origin, rtol=0, atol=atol)
    np.testing.assert_allclose(image.direction, direction, rtol=0, atol=atol)


@pytest.fixture(params=["rotation", "rotation_mirrored"])
def oblique(request) -> Image:
    direction = OBLIQUE if request.param == "rotation" else OBLIQUE @ np.diag([1.0, -1.0, 1.0])
    array = np.random.default_rng(0).integers(-1000, 1500, size=(5, 6, 7), dtype=np.int16)
    return Image(array, spacing=SPACING, origin=ORIGIN, direction=direction)


def labels_for(image: Image) -> np.ndarray:
    labels = np.zeros(image.shape_zyx, dtype=np.uint8)
    labels[1:3, 2:5, 1:4] = 1
    labels[3, 0:2, 4:7] = 2
    labels[4, 5, 6] = 7
    return labels


# -- round trips -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix, atol", [(".nii.gz", FLOAT32_TOLERANCE), (".nii", FLOAT32_TOLERANCE), (".nrrd", 1e-12), (".mha", 0.0), (".seg.nrrd", 1e-12)])
def test_mask_round_trip_keeps_oblique_anisotropic_geometry(oblique: Image, tmp_path: Path, suffix: str, atol: float):
    labels = labels_for(oblique)
    path = write_mask(labels, oblique, tmp_path / f"mask{suffix}")
    back = read_label(path)
    np.testing.assert_array_equal(back.array, labels)
    assert_geometry(back, oblique.spacing, oblique.origin, oblique.direction, atol)
    assert os.listdir(tmp_path) == [path.name]


# ITK re-derives a NIfTI direction from a float32 quaternion on every write: it moves by up to ~6e-8 (measured).
@pytest.mark.parametrize("suffix, direction_atol", [(".nii.gz", 1e-7), (".nrrd", 1e-15), (".mha", 0.0)])
def test_mask_of_a_read_image_has_its_geometry(oblique: Image, tmp_path: Path, suffix: str, direction_atol: float):
    """What a user does: read a file, write its mask in the same format; spacing and origin come back bit for bit."""
    source = tmp_path / f"image{suffix}"
    itk = sitk.GetImageFromArray(oblique.array)
    itk.SetSpacing(oblique.spacing)
    itk.SetOrigin(oblique.origin)
    itk.SetDirection(oblique.direction.ravel().tolist())
    sitk.WriteImage(itk, str(source))
    image = read_image(source)
    np.testing.assert_array_equal(image.array, oblique.array)
    back = read_label(write_mask(labels_for(image) > 0, image, tmp_path / f"mask{suffix}"))
    assert back.spacing == image.spacing and back.origin == image.origin
    np.testing.assert_allclose(back.direction, image.direction, rtol=0, atol=direction_atol)
    np.testing.assert_array_equal(back.array, labels_for(image) > 0)


def test_image_geometry_matches_simpleitk_for_a_real_volume(data_dir: Path):
    path = data_dir / "mr_pyradiomics/brain1_image.nrrd"
    image = read_image(path)
    spacing, origin, direction = sitk_geometry(sitk.ReadImage(str(path)))
    assert_geometry(image, spacing, origin, direction, atol=0.0)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


def test_two_d_mask_is_written_as_one_slice_on_the_image_grid(data_dir: Path, tmp_path: Path):
    image = read_image(data_dir / "xray_lung/cxr/CHNCXR_0001_0.png")
    mask = read_label(data_dir / "xray_lung/masks_bin/CHNCXR_0001_0.png").array > 0
    for name in ("lungs.nii.gz", "lungs.seg.nrrd"):
        written = sitk.ReadImage(str(write_mask(mask, image, tmp_path / name)))
        assert written.GetSize() == (mask.shape[1], mask.shape[0], 1)
        back = read_label(tmp_path / name)
        assert not back.is_volume
        np.testing.assert_array_equal(back.array, mask)
        assert back.spacing == image.spacing and back.origin == image.origin


# -- Slicer's .seg.nrrd ------------------------------------------------------------------------------------------
def nrrd_header(path: Path) -> dict:
    raw = path.read_bytes()
    text = raw[: raw.index(b"\n\n")].decode()
    return dict(line.split(":=", 1) for line in text.splitlines() if ":=" in line)


def test_seg_nrrd_header_has_slicer_fields(oblique: Image, tmp_path: Path):
    labels = labels_for(oblique)
    path = write_mask(labels, oblique, tmp_path / "x.seg.nrrd", segment_names={1: "liver", 2: "kidney tumour"})
    header = nrrd_header(path)
    assert [header[f"Segment{i}_Name"] for i in range(3)] == ["liver", "kidney tumour", "Segment_7"]
    assert [header[f"Segment{i}_LabelValue"] for i in range(3)] == ["1", "2", "7"]
    assert {header[f"Segment{i}_Layer"] for i in range(3)} == {"0"}
    assert len({header[f"Segment{i}_ID"] for i in range(3)}) == 3
    assert header["Segment0_Extent"] == "1 3 2 4 1 2"  # i0 i1 j0 j1 k0 k1 of label 1
    assert header["Segment2_Extent"] == "6 6 5 5 4 4"
    assert len(header["Segment1_Color"].split()) == 3
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    assert header["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"


@pytest.fixture(scope="module")
def slicer_scene():
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    yield slicer, scene
    scene.Clear(1)


def load_in_slicer(slicer_scene, path: Path):
    slicer, scene = slicer_scene
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node.GetSegmentation()


def segment_mask_on_grid(segmentation, index: int, shape_zyx) -> tuple:
    """A segment's binary mask placed on the full (Z, Y, X) grid, and its image-to-world (IJK->RAS) matrix."""
    import vtk
    from vtk.util import numpy_support

    segment = segmentation.GetNthSegment(index)
    labelmap = segment.GetRepresentation("Binary labelmap")
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    i0, i1, j0, j1, k0, k1 = labelmap.GetExtent()
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    values = values.reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)
    mask = np.zeros(shape_zyx, dtype=bool)
    mask[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] = values == segment.GetLabelValue()
    return mask, ijk_to_ras


def test_seg_nrrd_loads_in_slicer_with_names_masks_and_geometry(slicer_scene, oblique: Image, tmp_path: Path):
    labels = labels_for(oblique)
    names = {1: "liver", 2: "kidney tumour", 7: "lesion 7"}
    segmentation = load_in_slicer(slicer_scene, write_mask(labels, oblique, tmp_path / "x.seg.nrrd", names))
    assert segmentation.GetNumberOfSegments() == 3
    for index, (value, name) in enumerate(names.items()):
        assert segmentation.GetNthSegment(index).GetName() == name
        mask, ijk_to_ras = segment_mask_on_grid(segmentation, index, oblique.shape_zyx)
        np.testing.assert_array_equal(mask, labels == value)
        np.testing.assert_allclose(ijk_to_ras, ijk_to_ras_matrix(oblique), rtol=0, atol=1e-12)
    assert segmentation.GetConversionParameter("Reference image geometry").endswith(";0;6;0;5;0;4;")


def test_seg_nrrd_of_a_real_prediction_sized_mask_loads_in_slicer(slicer_scene, data_dir: Path, tmp_path: Path):
    image = read_image(data_dir / "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115_HU.nii.gz")
    lesion = read_label(data_dir / "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115_label.nii.gz").array > 0
    segmentation = load_in_slicer(slicer_scene, write_mask(lesion, image, tmp_path / "lesion.seg.nrrd", ["lesion"]))
    assert segmentation.GetNthSegment(0).GetName() == "lesion"
    mask, ijk_to_ras = segment_mask_on_grid(segmentation, 0, image.shape_zyx)
    np.testing.assert_array_equal(mask, lesion)
    np.testing.assert_allclose(ijk_to_ras, ijk_to_ras_matrix(image), rtol=0, atol=1e-12)


# -- the real files of the manifest ------------------------------------------------------------------------------
def manifest_entries() -> list:
    """Every manifest entry; without the data one placeholder, so the `data_dir` fixture skips or fails it."""
    from conftest import shared_root

    path = shared_root() / "data" / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else [None]


def expected_shape(entry: dict) -> tuple:
    if "shape_xyz" in entry:
        return tuple(reversed(entry["shape_xyz"]))
    if "shape_zyx" in entry:
        return tuple(entry["shape_zyx"])
    height, width = entry["shape_hw"]
    return (height, width, 3) if entry.get("channels") == 3 else (height, width)


@pytest.mark.parametrize("entry", manifest_entries(), ids=lambda e: Path(e["label"].split("::")[0]).name if e else "no-data")
def test_manifest_pair_reads_with_stated_shape_spacing_and_labels(data_dir: Path, entry: dict):
    image = read_image(data_dir / entry["image"])
    label = read_label(data_dir / entry["label"])
    assert image.array.shape == expected_shape(entry)
    assert label.shape_zyx == image.shape_zyx
    assert label.array.ndim == (3 if entry["dim"] == "3D" else 2)
    assert image.is_volume == (entry["dim"] == "3D")
    if "spacing_mm" in entry:
        np.testing.assert_allclose(image.spacing, entry["spacing_mm"], atol=1e-4)
        assert_geometry(label, image.spacing, image.origin, image.direction, atol=1e-5)
    present = entry["labels_present"]
    values = set(np.unique(label.array).tolist()) - {0}
    if "n_values" in present:
        assert len(values) == present["n_values"]
    else:
        assert {int(v) for v in present} <= values


def test_npz_geometry_and_gts_member(data_dir: Path):
    path = data_dir / "ct_deeplesion_medsam2/CT_Lesion_000001_02_01_008-023.npz"
    with np.load(path) as npz:
        imgs, gts, spacing = npz["imgs"], npz["gts"], npz["spacing"]
        origin, direction = npz["origin"], npz["direction"]
    image = read_image(path)
    np.testing.assert_array_equal(image.array, imgs)
    assert image.spacing == tuple(spacing) and image.origin == tuple(origin)
    np.testing.assert_array_equal(image.direction, direction.reshape(3, 3))
    np.testing.assert_array_equal(read_label(f"{path}::gts").array, gts)
    np.testing.assert_array_equal(read_label(path).array, gts)
    np.testing.assert_array_equal(read_image(f"{path}::gts").array, gts)


def test_gif_label_is_read_through_pillow(data_dir: Path):
    from PIL import Image as PILImage

    path = data_dir / "fundus_drive/1st_manual/01_manual1.gif"
    with PILImage.open(path) as im:
        expected = np.array(im)
    label = read_label(path)
    np.testing.assert_array_equal(label.array, expected)
    assert label.spacing == (1.0, 1.0, 1.0) and not label.is_volume


# -- DICOM -------------------------------------------------------------------------------------------------------
def write_dicom_series(volume: sitk.Image, folder: Path, series_uid: str, modality: str = "CT") -> list:
    """One file per slice with the tags a scanner would write (position, orientation, series)."""
    folder.mkdir(exist_ok=True)
    direction = np.array(volume.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in np.concatenate([direction[:, 0], direction[:, 1]]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(volume.GetDepth()):
        slice_image = volume[:, :, k]
        tags = {
            "0008|0060": modality,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.10f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k))),
            "0018|0050": f"{volume.GetSpacing()[2]:.10f}",
        }
        for key, value in tags.items():
            slice_image.SetMetaData(key, value)
        files.append(folder / f"slice{k:03d}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(slice_image)
    return files


@pytest.fixture(scope="module")
def real_ct_volume(data_dir: Path) -> sitk.Image:
    volume = sitk.ReadImage(str(data_dir / "ct_mr_totalseg_example/example_ct_sm.nii.gz"))[:, :, 10:18]
    volume.SetDirection(OBLIQUE.ravel().tolist())
    volume.SetSpacing((0.8, 0.9, 2.5))
    return volume


def test_dicom_series_folder_reads_with_geometry_and_modality(real_ct_volume: sitk.Image, tmp_path: Path):
    files = write_dicom_series(real_ct_volume, tmp_path / "series", "1.2.826.0.1.3680043.2.1125.2")
    image = read_image(tmp_path / "series")
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(real_ct_volume))
    spacing, origin, direction = sitk_geometry(real_ct_volume)
    assert_geometry(image, spacing, origin, direction, atol=1e-6)
    assert image.modality_hint == "CT"
    single = read_image(files[3])  # one slice: a 2D image that keeps its place in space
    assert single.array.shape == image.array.shape[1:] and not single.is_volume and single.modality_hint == "CT"
    np.testing.assert_allclose(single.origin, real_ct_volume.TransformIndexToPhysicalPoint((0, 0, 3)), atol=1e-6)
    np.testing.assert_array_equal(single.array, image.array[3])


def test_dicom_folder_with_two_series_or_a_missing_slice_is_refused(real_ct_volume: sitk.Image, tmp_path: Path):
    files = write_dicom_series(real_ct_volume, tmp_path / "gap", "1.2.826.0.1.3680043.2.1125.3")
    files[4].unlink()
    with pytest.raises(ImageError, match="uneven slice spacing"):
        read_image(tmp_path / "gap")
    write_dicom_series(real_ct_volume, tmp_path / "two", "1.2.826.0.1.3680043.2.1125.4")
    write_dicom_series(real_ct_volume[:, :, :3], tmp_path / "two", "1.2.826.0.1.3680043.2.1125.5", modality="MR")
    with pytest.raises(ImageError, match="2 DICOM series"):
        read_image(tmp_path / "two")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="without a DICOM series"):
        read_image(tmp_path / "empty")


# -- shapes, identity ---------------------------------------------------------------------------------------------
def test_one_voxel_thick_volume_is_a_2d_image_that_keeps_its_geometry(tmp_path: Path):
    array = np.arange(12, dtype=np.int16).reshape(1, 3, 4)
    image = Image(array, spacing=SPACING, origin=ORIGIN, direction=OBLIQUE)
    assert image.array.shape == (3, 4) and not image.is_volume and image.shape_zyx == (1, 3, 4)
    assert image.spacing == SPACING and image.origin == ORIGIN
    rgb = Image.from_array(np.zeros((1, 3, 4, 3), np.uint8))
    assert rgb.array.shape == (3, 4, 3) and rgb.is_rgb
    mask = np.array([[0, 1, 1, 0]] * 3, dtype=bool)
    for written in (mask, mask[None]):
        back = read_label(write_mask(written, image, tmp_path / "m.mha"))
        np.testing.assert_array_equal(back.array, mask)
        assert back.spacing == SPACING and back.origin == ORIGIN


def test_identity_follows_content_geometry_and_modality():
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    base = Image.from_array(array, spacing=(1, 1, 2))
    assert base.identity == Image.from_array(array.copy(), spacing=(1, 1, 2)).identity
    changed = array.copy()
    changed[2, 3, 4] += 1
    others = [
        Image.from_array(changed, spacing=(1, 1, 2)),
        Image.from_array(array, spacing=(1, 1, 2.5)),
        Image.from_array(array, spacing=(1, 1, 2), origin=(0, 0, 1)),
        Image.from_array(array, spacing=(1, 1, 2), direction=np.diag([1.0, -1.0, 1.0])),
        Image.from_array(array, spacing=(1, 1, 2), modality="CT"),
        Image.from_array(array.astype(np.int32), spacing=(1, 1, 2)),
    ]
    assert len({base.identity, *(o.identity for o in others)}) == len(others) + 1
    with pytest.raises(ValueError):
        base.array[0, 0, 0] = 5  # read-only: the identity must stay true


# -- bad input ----------------------------------------------------------------------------------------------------
def test_missing_and_garbage_files_raise_image_error(tmp_path: Path):
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "absent.nii.gz")
    with pytest.raises(ImageError, match="not found"):
        read_label(tmp_path / "absent.npz::gts")
    garbage = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for name in ("scan.nii.gz", "scan.nrrd", "photo.png", "photo.jpg", "cells.tif", "case.npz", "no_suffix"):
        (tmp_path / name).write_bytes(garbage)
        with pytest.raises(ImageError):
            read_image(tmp_path / name)
        with pytest.raises(ImageError):
            read_label(tmp_path / name)
    for name, content in (("empty.npz", b""), ("truncated.npz", b"PK\x03\x04" + garbage[:100]), ("empty.nrrd", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageError, match="cannot read"):
            read_image(tmp_path / name)


def test_wrong_npz_member_and_member_on_non_npz(data_dir: Path):
    with pytest.raises(ImageError, match="no array 'labels'"):
        read_label(f"{data_dir / 'ct_deeplesion_medsam2/CT_Lesion_000001_02_01_008-023.npz'}::labels")
    with pytest.raises(ImageError, match="inside an .npz"):
        read_image(f"{data_dir / 'ct_dcmqi_3slice/ct_3slice.nii.gz'}::gts")


def write_sitk(array: np.ndarray, path: Path, is_vector: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=is_vector), str(path))
    return path


def test_4d_rgb_volume_nan_and_inf_files_raise_image_error(tmp_path: Path):
    with pytest.raises(ImageError, match="4D"):
        read_image(write_sitk(np.zeros((2, 3, 4, 5), np.int16), tmp_path / "four_d.nii.gz"))
    with pytest.raises(ImageError, match="RGB volumes"):
        read_image(write_sitk(np.zeros((3, 4, 5, 3), np.uint8), tmp_path / "rgb_volume.nrrd", is_vector=True))
    # (ITK's NIfTI reader turns NaN/Inf into 0 itself; NRRD and MHA keep them.)
    for name, value in (("nan.nrrd", np.nan), ("inf.mha", np.inf), ("minus_inf.nrrd", -np.inf)):
        array = np.ones((3, 4, 5), np.float32)
        array[1, 2, 3] = value
        with pytest.raises(ImageError, match="1 NaN/Inf"):
            read_image(write_sitk(array, tmp_path / name))
    one_time_point = read_image(write_sitk(np.ones((1, 3, 4, 5), np.int16), tmp_path / "t1.nii.gz"))
    assert one_time_point.array.shape == (3, 4, 5)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((0, 4)), "empty"),
        (np.zeros((2, 3, 4, 5)), "4D"),
        (np.zeros((2, 3, 4, 3)), "RGB volumes"),
        (np.zeros(7), "must be 2D"),
        (np.array([[1.0, np.nan]]), "NaN/Inf"),
        (np.array([[1.0, np.inf]]), "NaN/Inf"),
        (np.array([["a", "b"]]), "numbers"),
    ],
)
def test_bad_arrays_raise_image_error(array: np.ndarray, message: str):
    with pytest.raises(ImageError, match=message):
        Image.from_array(array)


def test_bad_geometry_raises_image_error():
    with pytest.raises(ImageError, match="spacing"):
        Image.from_array(np.zeros((3, 3)), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ImageError, match="singular"):
        Image.from_array(np.zeros((3, 3)), direction=np.zeros((3, 3)))
    with pytest.raises(ImageError, match="origin"):
        Image.from_array(np.zeros((3, 3)), origin=(0.0, np.nan, 0.0))


# -- failed writes -----------------------------------------------------------------------------------------------
def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(oblique: Image, tmp_path: Path, monkeypatch):
    target = tmp_path / "mask.nii.gz"
    target.write_bytes(b"previous result")

    def crash_half_way(image, path, useCompression=False):
        Path(path).write_bytes(b"\x1f\x8b partial")
        raise RuntimeError("No space left on device")

    import SimpleITK as sitk

    monkeypatch.setattr(sitk, "WriteImage", crash_half_way)
    with pytest.raises(ImageError, match="No space left on device"):
        write_mask(labels_for(oblique), oblique, target)
    assert os.listdir(tmp_path) == ["mask.nii.gz"]
    assert target.read_bytes() == b"previous result"


def test_invalid_writes_raise_before_touching_disk(oblique: Image, tmp_path: Path):
    labels = labels_for(oblique)
    with pytest.raises(ImageError, match="does not match"):
        write_mask(labels[:-1], oblique, tmp_path / "m.nii.gz")
    with pytest.raises(ImageError, match="use one of"):
        write_mask(labels, oblique, tmp_path / "m.png")
    with pytest.raises(ImageError, match="does not exist"):
        write_mask(labels, oblique, tmp_path / "missing" / "m.nii.gz")
    with pytest.raises(ImageError, match="bool or integer"):
        write_mask(labels.astype(np.float32), oblique, tmp_path / "m.nii.gz")
    with pytest.raises(ImageError, match="negative"):
        write_mask(labels.astype(np.int16) - 1, oblique, tmp_path / "m.nii.gz")
    assert os.listdir(tmp_path) == []
