"""A real CT lesion in a deliberately awkward geometry: an oblique direction, a rotated and shifted parent transform,
prompts placed in world coordinates from the ground-truth box. Used by pytest (slicer-core) and by the module's
self-test inside Slicer, so both check the same behaviour."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import vtk
from slicer import util

CASE = "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115"
IMAGE = CASE + "_HU.nii.gz"
LABEL = CASE + "_label.nii.gz"
SLICES = (5, 7)  # the prompted slice range: a few slices keep the test to a few encoder calls


def find_data_dir() -> Optional[Path]:
    """`$FASTMEDSAM_SHARED/data`, else `<repo>/../shared/data` (developer layout), else None."""
    candidates = []
    if os.environ.get("FASTMEDSAM_SHARED"):
        candidates.append(Path(os.environ["FASTMEDSAM_SHARED"]) / "data")
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    return next((c for c in candidates if (c / IMAGE).is_file()), None)


def rotation(axis, degrees: float) -> np.ndarray:
    """4x4 rotation about a unit axis through the origin (Rodrigues)."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    return matrix


@dataclass
class LesionScene:
    volume: object
    transform: object
    label: np.ndarray  # (K, J, I) ground truth on the volume's voxel grid
    box: Tuple[int, int, int, int, int, int]  # GT box on SLICES: k0, k1, j0, j1, i0, i1 (inclusive)

    def ijk_to_world(self) -> np.ndarray:
        """Computed independently of the module: the volume's IJKToRAS then its parent transform."""
        ijk_to_ras = vtk.vtkMatrix4x4()
        self.volume.GetIJKToRASMatrix(ijk_to_ras)
        to_world = vtk.vtkMatrix4x4()
        self.transform.GetMatrixTransformToWorld(to_world)
        return util.arrayFromVTKMatrix(to_world) @ util.arrayFromVTKMatrix(ijk_to_ras)

    def world(self, ijk) -> np.ndarray:
        return (self.ijk_to_world() @ np.r_[np.asarray(ijk, dtype=float), 1.0])[:3]


def load_lesion_scene(scene, volumes_logic, data_dir: Path) -> LesionScene:
    volume = volumes_logic.AddArchetypeVolume(str(data_dir / IMAGE), "CT lesion", 0, vtk.vtkStringArray())
    label_node = volumes_logic.AddArchetypeVolume(str(data_dir / LABEL), "lesion GT", 1, vtk.vtkStringArray())
    if volume is None or label_node is None:
        raise RuntimeError(f"could not load {data_dir / IMAGE} or its label")
    label = np.array(util.arrayFromVolume(label_node), dtype=np.uint8)
    for node in (label_node.GetStorageNode(), label_node.GetDisplayNode(), label_node):
        if node is not None:
            scene.RemoveNode(node)

    # oblique: rotate the file's directions by 20 degrees and move the origin (the voxel grid stays the same)
    directions = vtk.vtkMatrix4x4()
    volume.GetIJKToRASDirectionMatrix(directions)
    oblique = rotation((1.0, 1.0, 0.0), 20.0) @ util.arrayFromVTKMatrix(directions)
    volume.SetIJKToRASDirectionMatrix(util.vtkMatrixFromArray(oblique))
    volume.SetOrigin(-120.0, 35.0, 60.0)

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "patient motion")
    to_parent = rotation((0.0, 1.0, 1.0), 15.0)
    to_parent[:3, 3] = (30.0, -20.0, 10.0)
    transform.SetMatrixTransformToParent(util.vtkMatrixFromArray(to_parent))
    volume.SetAndObserveTransformNodeID(transform.GetID())

    k0, k1 = SLICES
    ks, js, is_ = np.nonzero(label[k0:k1 + 1])
    box = (k0, k1, int(js.min()), int(js.max()), int(is_.min()), int(is_.max()))
    return LesionScene(volume, transform, label, box)


def add_roi_around(scene, lesion: LesionScene, box, name: str = "lesion box"):
    """An ROI in world coordinates whose faces lie on the voxel edges of `box` (k0, k1, j0, j1, i0, i1),
    oriented with the volume's (transformed) axes."""
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    place_roi(roi, lesion, box)
    return roi


def place_roi(roi, lesion: LesionScene, box) -> None:
    """Move / resize an ROI onto `box` (what dragging its handles does)."""
    k0, k1, j0, j1, i0, i1 = box
    matrix = lesion.ijk_to_world()
    axes = matrix[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    units = axes / lengths
    if np.linalg.det(units) < 0:  # keep the ROI frame right-handed; the box is symmetric about its centre
        units[:, 2] *= -1
    object_to_world = np.eye(4)
    object_to_world[:3, :3] = units
    object_to_world[:3, 3] = lesion.world(((i0 + i1) / 2, (j0 + j1) / 2, (k0 + k1) / 2))
    roi.SetAndObserveObjectToNodeMatrix(util.vtkMatrixFromArray(object_to_world))
    roi.SetSize(*((np.array([i1 - i0 + 1, j1 - j0 + 1, k1 - k0 + 1]) * lengths).tolist()))


def add_points(scene, lesion: LesionScene, voxels, role: str, name: str):
    from FastMedSAMLogicLib.prompt_nodes import set_role

    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    set_role(node, role)
    for ijk in voxels:
        node.AddControlPointWorld(vtk.vtkVector3d(*lesion.world(ijk)))
    return node


def segment_array(scene, segmentations_logic, segmentation, segment_id: str, reference_volume) -> np.ndarray:
    """The segment exported by Slicer itself into a labelmap on the reference volume's grid, (K, J, I) bool."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    if not segmentations_logic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, reference_volume):
        raise RuntimeError("ExportSegmentsToLabelmapNode failed")
    array = np.array(util.arrayFromVolume(labelmap)) > 0
    scene.RemoveNode(labelmap)
    return array


def segment_world_centroid(segmentation, segment_id: str) -> np.ndarray:
    """Centroid of the segment's voxels in world RAS, through the segmentation's own parent transform."""
    from slicer import vtkOrientedImageData, vtkSlicerSegmentationsModuleLogic
    from vtk.util import numpy_support

    image = vtkOrientedImageData()
    vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segmentation, segment_id, image, True)
    extent = image.GetExtent()
    label_value = segmentation.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape) == label_value
    ks, js, is_ = np.nonzero(voxels)
    ijk = np.c_[is_ + extent[0], js + extent[2], ks + extent[4], np.ones(len(ks))]
    to_world = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(to_world)
    return (ijk @ util.arrayFromVTKMatrix(to_world).T)[:, :3].mean(axis=0)
