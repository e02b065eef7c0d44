"""Index <-> LPS <-> RAS conversions, checked against SimpleITK and slicer-core on oblique, anisotropic grids."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_imageio import OBLIQUE, ORIGIN, SPACING

from FastMedSAMLib.errors import PromptError
from FastMedSAMLib.io import geometry
from FastMedSAMLib.io.images import Image, read_image
from FastMedSAMLib.prompts import Box3D

SHAPE_ZYX = (9, 11, 13)


@pytest.fixture(params=["rotation", "rotation_mirrored", "axial_lps"])
def grid(request):
    """The same oblique / mirrored / plain grid as an `Image` and as a SimpleITK image."""
    direction = {
        "rotation": OBLIQUE,
        "rotation_mirrored": OBLIQUE @ np.diag([1.0, 1.0, -1.0]),
        "axial_lps": np.eye(3),
    }[request.param]
    array = np.zeros(SHAPE_ZYX, dtype=np.int16)
    image = Image(array, spacing=SPACING, origin=ORIGIN, direction=direction)
    itk = sitk.GetImageFromArray(array)
    itk.SetSpacing(SPACING)
    itk.SetOrigin(ORIGIN)
    itk.SetDirection(direction.ravel().tolist())
    return image, itk


def random_indices(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-2.0, 1.0, size=(count, 3)) * -np.array(SHAPE_ZYX[::-1], dtype=np.float64)


def test_index_to_lps_matches_simpleitk(grid):
    image, itk = grid
    continuous = random_indices(200)
    expected = np.array([itk.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in continuous])
    np.testing.assert_allclose(geometry.index_to_lps(image, continuous), expected, rtol=0, atol=1e-10)
    integer = np.array([[0, 0, 0], [12, 10, 8], [3, 7, 2], [-1, 4, 9]])
    expected = np.array([itk.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in integer])
    np.testing.assert_allclose(geometry.index_to_lps(image, integer), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(geometry.index_to_lps(image, integer[1]), expected[1], rtol=0, atol=1e-10)


def test_lps_to_index_matches_simpleitk_and_inverts(grid):
    image, itk = grid
    points = geometry.index_to_lps(image, random_indices(200, seed=1)) + 0.37
    expected = np.array([itk.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in points])
    np.testing.assert_allclose(geometry.lps_to_index(image, points), expected, rtol=0, atol=1e-10)
    nearest = np.array([itk.TransformPhysicalPointToIndex(p.tolist()) for p in points])
    np.testing.assert_array_equal(np.floor(geometry.lps_to_index(image, points) + 0.5).astype(int), nearest)
    indices = random_indices(50, seed=2)
    np.testing.assert_allclose(geometry.lps_to_index(image, geometry.index_to_lps(image, indices)), indices, atol=1e-11)


def test_ras_is_lps_with_x_and_y_negated(grid):
    image, itk = grid
    indices = random_indices(20, seed=3)
    lps = np.array([itk.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in indices])
    ras = geometry.index_to_ras(image, indices)
    np.testing.assert_allclose(ras, lps * [-1, -1, 1], rtol=0, atol=1e-10)
    np.testing.assert_allclose(geometry.ras_to_lps(ras), lps, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(geometry.lps_to_ras([10.0, -20.0, 30.0]), [-10.0, 20.0, 30.0])
    np.testing.assert_allclose(geometry.ras_to_index(image, ras), indices, atol=1e-11)
    homogeneous = np.c_[indices, np.ones(len(indices))]
    np.testing.assert_allclose((geometry.ijk_to_ras_matrix(image) @ homogeneous.T).T[:, :3], ras, atol=1e-10)
    np.testing.assert_allclose((geometry.ras_to_ijk_matrix(image) @ np.c_[ras, np.ones(len(ras))].T).T[:, :3], indices, atol=1e-10)


def test_ijk_to_ras_matrix_formula(grid):
    image, _ = grid
    expected = np.eye(4)
    expected[:3, :3] = image.direction @ np.diag(SPACING)
    expected[:3, 3] = ORIGIN
    np.testing.assert_array_equal(geometry.ijk_to_ras_matrix(image), np.diag([-1.0, -1.0, 1.0, 1.0]) @ expected)
    spacing, origin, direction = geometry.geometry_from_ijk_to_ras(geometry.ijk_to_ras_matrix(image))
    np.testing.assert_allclose(spacing, SPACING, atol=1e-14)
    np.testing.assert_allclose(origin, ORIGIN, atol=1e-14)
    np.testing.assert_allclose(direction, image.direction, atol=1e-14)


@pytest.fixture(scope="module")
def slicer_scene():
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    yield slicer, scene
    scene.Clear(1)


def test_slicer_volume_node_agrees_on_world_positions(grid, slicer_scene, tmp_path: Path):
    """slicer-core loads the file: its IJKToRAS equals ours (right-handed grids); for a mirrored grid Slicer
    re-orders the voxels, and an Image built from its array and matrix still puts every voxel at the same place."""
    import vtk
    from vtk.util import numpy_support

    slicer, scene = slicer_scene
    image, itk = grid
    values = np.random.default_rng(4).integers(0, 30000, size=SHAPE_ZYX).astype(np.int16)
    itk = sitk.GetImageFromArray(values)
    itk.CopyInformation(grid[1])
    path = tmp_path / "volume.nrrd"
    sitk.WriteImage(itk, str(path))
    ours = read_image(path)
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    slicer_ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    if np.linalg.det(image.direction) > 0:
        np.testing.assert_allclose(slicer_ijk_to_ras, geometry.ijk_to_ras_matrix(ours), rtol=0, atol=1e-12)
    slicer_array = numpy_support.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).reshape(SHAPE_ZYX)
    spacing, origin, direction = geometry.geometry_from_ijk_to_ras(slicer_ijk_to_ras)
    from_slicer = Image(slicer_array, spacing=spacing, origin=origin, direction=direction)
    kji = np.argwhere(np.ones(SHAPE_ZYX, dtype=bool))
    ras = geometry.index_to_ras(from_slicer, kji[:, ::-1].astype(np.float64))
    back = np.rint(geometry.ras_to_index(ours, ras)).astype(int)
    np.testing.assert_array_equal(ours.array[back[:, 2], back[:, 1], back[:, 0]], slicer_array.ravel())


def voxel_box_world_corners(image: Image, low_ijk, high_ijk, space: str = "lps"):
    """The world-axis-aligned box around the centres of an index box's 8 corner voxels."""
    corners = np.array([[(low_ijk, high_ijk)[b >> a & 1][a] for a in range(3)] for b in range(8)], dtype=np.float64)
    world = geometry.index_to_lps(image, corners)
    if space == "ras":
        world = geometry.lps_to_ras(world)
    return world.min(axis=0), world.max(axis=0)


@pytest.mark.parametrize("space", ["lps", "ras"])
def test_world_box_on_oblique_image_matches_simpleitk_rounding(grid, space: str):
    image, itk = grid
    rng = np.random.default_rng(5)
    for _ in range(25):
        a, b = (geometry.index_to_lps(image, rng.uniform(-1, 14, 3)) for _ in range(2))
        low, high = np.minimum(a, b), np.maximum(a, b)
        corners = np.array([[(low, high)[bit >> axis & 1][axis] for axis in range(3)] for bit in range(8)])
        nearest = np.array([itk.TransformPhysicalPointToIndex(c.tolist()) for c in corners])
        given = (a, b) if space == "lps" else (geometry.lps_to_ras(a), geometry.lps_to_ras(b))
        box = geometry.world_box_to_index(image, *given, space=space)
        assert (box.x0, box.y0, box.z0) == tuple(nearest.min(axis=0))
        assert (box.x1, box.y1, box.z1) == tuple(nearest.max(axis=0))


def test_world_box_around_voxel_centres_encloses_exactly_those_voxels(grid):
    image, _ = grid
    low, high = voxel_box_world_corners(image, (2, 3, 1), (9, 7, 6))
    box = geometry.world_box_to_index(image, high, low)  # corner order does not matter
    if np.allclose(np.abs(image.direction), np.eye(3)):
        assert box == Box3D(2, 3, 1, 9, 7, 6)
    else:  # an oblique box turns: it holds the voxel box and more
        assert box.x0 <= 2 and box.y0 <= 3 and box.z0 <= 1 and box.x1 >= 9 and box.y1 >= 7 and box.z1 >= 6


def test_world_box_voxel_boundaries_and_thin_boxes():
    image = Image(np.zeros(SHAPE_ZYX, np.int16), spacing=(0.5, 2.0, 4.0), origin=(10.0, -20.0, 30.0))
    # voxel i spans x = 10 + 0.5 * (i -/+ 0.5): a corner on a boundary does not take the voxel beyond it
    box = geometry.world_box_to_index(image, (10.75, -17.0, 34.0), (12.25, -13.0 - 1e-12, 46.0))
    assert box == Box3D(2, 2, 1, 4, 3, 4)
    thin = geometry.world_box_to_index(image, (11.0, -18.0, 38.0), (13.0, -12.0, 38.0))
    assert (thin.z0, thin.z1) == (2, 2)
    on_boundary = geometry.world_box_to_index(image, (11.0, -18.0, 40.0), (13.0, -12.0, 40.0))
    assert on_boundary.z0 == on_boundary.z1 == 3
    ras = geometry.world_box_to_index(image, (-11.0, 18.0, 38.0), (-13.0, 12.0, 38.0), space="RAS")
    assert ras == thin
    with pytest.raises(PromptError, match="unknown coordinate space"):
        geometry.world_box_to_index(image, (0, 0, 0), (1, 1, 1), space="xyz")


def test_world_point_to_index(grid, data_dir: Path):
    image, itk = grid
    ras = geometry.lps_to_ras(itk.TransformIndexToPhysicalPoint((4, 6, 2)))
    point = geometry.world_point_to_index(image, ras, space="ras", positive=False)
    assert np.allclose((point.x, point.y, point.z), (4, 6, 2), atol=1e-10) and not point.positive
    flat = read_image(data_dir / "ct_dcmqi_3slice/ct_3slice.nii.gz")
    slice_image = Image(flat.array[1:2], flat.spacing, geometry.index_to_lps(flat, [0, 0, 1]), flat.direction)
    on_plane = geometry.world_point_to_index(slice_image, geometry.index_to_lps(flat, [100, 200, 1.2]))
    assert on_plane.z is None and np.allclose((on_plane.x, on_plane.y), (100, 200))
    with pytest.raises(PromptError, match="off the 2D image's plane"):
        geometry.world_point_to_index(slice_image, geometry.index_to_lps(flat, [100, 200, 2]))


def test_real_volume_geometry_matches_simpleitk(data_dir: Path):
    path = data_dir / "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115_HU.nii.gz"  # flipped axes, 5 mm slices
    image, itk = read_image(path), sitk.ReadImage(str(path))
    indices = random_indices(100, seed=6)
    expected = np.array([itk.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in indices])
    np.testing.assert_allclose(geometry.index_to_lps(image, indices), expected, rtol=0, atol=1e-9)
