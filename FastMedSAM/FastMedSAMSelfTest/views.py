"""Prompts drawn in any slice view (Red, Yellow, Green, oblique) on a real MR volume made oblique and put under a
rotated parent transform: the box is an ROI lying in the view's plane (as Slicer places one there), the Logic gets
the view's SliceToRAS. Shared by pytest and the module's self-test inside Slicer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import vtk
from slicer import util

from FastMedSAMLib.evaluation.metrics import dice
from FastMedSAMLib.prompts import Box, Box3D
from FastMedSAMLogicLib.segment_io import Region
from FastMedSAMLogicLib.view_frame import ViewFrame

from .scenario import LesionScene, rotation, segment_array

HEART = "mr_la_heart/LA_06SR5RBREL16DQ6M8LWS"  # left atrium, 0.625 mm isotropic MR
HEART_SPACING = (0.625, 0.625, 1.25)  # made anisotropic on purpose (the voxel grid and the label stay aligned)
VIEWS = ("Red", "Yellow", "Green", "oblique")
MIN_DICE_2D = 0.75  # LiteMedSAM, GT box on the atrium's middle plane of each view (measured 0.88-0.93)
MIN_DICE_3D = 0.75  # the same over a 5-plane 3D box propagated along each view's normal
SLAB = 2  # planes on each side of the middle one for the 3D box


@dataclass
class ViewPrompt:
    frame: ViewFrame
    slice_to_ras: np.ndarray
    box: Box3D  # the ground-truth box over the 3D box's planes, in the frame's voxel indices (inclusive)
    plane_box: Box  # the ground-truth box of the object's middle plane (z = that plane)


def load_heart_scene(scene, volumes_logic, data_dir: Path, case: str = HEART) -> LesionScene:
    """The LA MR volume, oblique (rotated directions, moved origin, anisotropic spacing), under a rotated and
    shifted parent transform, with its ground truth on the same voxel grid."""
    volume = volumes_logic.AddArchetypeVolume(str(data_dir / f"{case}_img.nii.gz"), "LA heart", 0, vtk.vtkStringArray())
    label_node = volumes_logic.AddArchetypeVolume(str(data_dir / f"{case}_label.nii.gz"), "LA GT", 1,
                                                  vtk.vtkStringArray())
    if volume is None or label_node is None:
        raise RuntimeError(f"could not load {data_dir / case}")
    label = np.array(util.arrayFromVolume(label_node)) > 0
    for node in (label_node.GetStorageNode(), label_node.GetDisplayNode(), label_node):
        if node is not None:
            scene.RemoveNode(node)
    directions = vtk.vtkMatrix4x4()
    volume.GetIJKToRASDirectionMatrix(directions)
    volume.SetIJKToRASDirectionMatrix(util.vtkMatrixFromArray(rotation((0.3, 1.0, 0.2), 25.0)
                                                              @ util.arrayFromVTKMatrix(directions)))
    volume.SetSpacing(*HEART_SPACING)
    volume.SetOrigin(40.0, -60.0, 25.0)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "heart motion")
    to_parent = rotation((1.0, 0.0, 1.0), -12.0)
    to_parent[:3, 3] = (-15.0, 8.0, 30.0)
    transform.SetMatrixTransformToParent(util.vtkMatrixFromArray(to_parent))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    ks, js, is_ = np.nonzero(label)
    box = (int(ks.min()), int(ks.max()), int(js.min()), int(js.max()), int(is_.min()), int(is_.max()))
    return LesionScene(volume, transform, label.astype(np.uint8), box)


def view_matrix(scene: LesionScene, view: str, centre_ijk) -> np.ndarray:
    """SliceToRAS of a view through `centre_ijk`: Red/Yellow/Green show the volume's own K/I/J planes (as after
    Slicer's "rotate to volume plane"); "oblique" is the Yellow view tilted 30 and 20 degrees."""
    matrix = scene.ijk_to_world()
    u = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)
    x, y, n = {
        "Red": (u[:, 0], -u[:, 1], u[:, 2]),
        "Yellow": (u[:, 1], -u[:, 2], u[:, 0]),
        "Green": (u[:, 0], -u[:, 2], u[:, 1]),
        "oblique": (u[:, 1], -u[:, 2], u[:, 0]),
    }[view]
    axes = np.c_[x, y, n]
    if view == "oblique":
        axes = axes @ rotation((1.0, 0.0, 0.0), 30.0)[:3, :3] @ rotation((0.0, 1.0, 0.0), 20.0)[:3, :3]
    out = np.eye(4)
    out[:3, :3] = axes
    out[:3, 3] = scene.world(centre_ijk)
    return out


def frame_label(frame: ViewFrame, label: np.ndarray) -> np.ndarray:
    return frame.image(label.astype(np.uint8)) > 0


def gt_prompt(ctx, scene: LesionScene, view: str, slab: Optional[int] = SLAB) -> ViewPrompt:
    """The GT box of the object's middle plane in the view, over `slab` planes either side for the 3D box (None:
    every plane the object reaches along the view's normal)."""
    centre = [(scene.box[4] + scene.box[5]) / 2, (scene.box[2] + scene.box[3]) / 2, (scene.box[0] + scene.box[1]) / 2]
    slice_to_ras = view_matrix(scene, view, centre)
    frame = ctx.logic.frame_of_view(scene.volume, slice_to_ras)
    truth = frame_label(frame, scene.label)
    planes = np.nonzero(truth.any(axis=(1, 2)))[0]
    middle = int((planes.min() + planes.max()) // 2)
    k0, k1 = (int(planes.min()), int(planes.max())) if slab is None else (middle - slab, middle + slab)
    _, js, is_ = np.nonzero(truth[k0:k1 + 1])
    box = Box3D(int(is_.min()), int(js.min()), k0, int(is_.max()), int(js.max()), k1)
    _, js, is_ = np.nonzero(truth[middle:middle + 1])
    plane_box = Box(int(is_.min()), int(js.min()), int(is_.max()), int(js.max()), z=middle)
    # the view's plane through the middle plane: same axes, origin moved along the normal
    index_to_world = scene.ijk_to_world() @ frame.index_to_ijk
    slice_to_ras = slice_to_ras.copy()
    along = index_to_world[:3, 2]
    offset = middle - frame.world_to_index(scene.volume, slice_to_ras[:3, 3][None])[0][2]
    slice_to_ras[:3, 3] += offset * along
    return ViewPrompt(frame, slice_to_ras, box, plane_box)


def roi_in_view(scene_mrml, scene: LesionScene, prompt: ViewPrompt, flat: bool, name: str):
    """A new ROI placed by `place_roi_in_view`."""
    roi = scene_mrml.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    place_roi_in_view(roi, scene, prompt, flat)
    return roi


def place_roi_in_view(roi, scene: LesionScene, prompt: ViewPrompt, flat: bool) -> None:
    """The ROI with the view's axes, its faces on the voxel edges of the prompt's box in the frame; flat (one
    plane, the middle one) for a 2D box."""
    box = prompt.plane_box if flat else prompt.box
    z0, z1 = (box.z, box.z) if flat else (box.z0 - 0.5, box.z1 + 0.5)
    index_to_world = scene.ijk_to_world() @ prompt.frame.index_to_ijk
    lo = np.array([box.x0 - 0.5, box.y0 - 0.5, z0])
    hi = np.array([box.x1 + 0.5, box.y1 + 0.5, z1])
    steps = np.linalg.norm(index_to_world[:3, :3], axis=0)
    units = index_to_world[:3, :3] / steps
    if np.linalg.det(units) < 0:
        units[:, 2] *= -1
    object_to_world = np.eye(4)
    object_to_world[:3, :3] = units
    object_to_world[:3, 3] = (index_to_world @ np.r_[(lo + hi) / 2, 1.0])[:3]
    roi.SetAndObserveObjectToNodeMatrix(util.vtkMatrixFromArray(object_to_world))
    roi.SetSize(*((hi - lo) * steps).tolist())


def covered(frame: ViewFrame, k0: int, k1: int) -> np.ndarray:
    """The volume voxels that frame planes k0..k1 rewrite (the planes rasterised into the volume grid)."""
    height, width = frame.shape[1], frame.shape[2]
    region = Region(k0, k1, 0, height - 1, 0, width - 1)
    volume_region, _, where = frame.to_volume(region, np.zeros(region.shape, dtype=bool))
    out = np.zeros(frame.volume_shape, dtype=bool)
    out[volume_region.slices] = where
    return out


def engine_mask_in_volume(session, frame: ViewFrame, box, k0: int, k1: int) -> np.ndarray:
    """The engine (its own Session, the resliced image set) with the box, its mask mapped back onto the volume."""
    mask = np.asarray(session.predict(box=box).mask, dtype=bool)
    if mask.ndim == 2:
        full = np.zeros(frame.shape, dtype=bool)
        full[k0] = mask
        mask = full
    region = Region(k0, k1, 0, frame.shape[1] - 1, 0, frame.shape[2] - 1)
    volume_region, values, where = frame.to_volume(region, mask[k0:k1 + 1])
    out = np.zeros(frame.volume_shape, dtype=bool)
    out[volume_region.slices] = values & where
    return out


def aligned_reference(frame: ViewFrame, mask: np.ndarray) -> np.ndarray:
    """For a view along the volume's axes: the frame mask carried back by plain numpy (undo flips, transpose)."""
    source, flips = frame.axes
    xyz = mask.transpose(2, 1, 0)
    for d in range(3):
        if flips[d]:
            xyz = np.flip(xyz, axis=d)
    return xyz.transpose([source.index(a) for a in range(3)]).transpose(2, 1, 0)


def prompts_in_any_view(ctx) -> Dict[str, object]:
    """A 2D box on the object's middle plane and a 3D box over 5 planes, drawn in Red, Yellow, Green and an oblique
    view: each mask lands on the ground truth, and equals voxel for voxel the engine's mask on the same resliced
    image mapped back."""
    from .scenario import find_data_dir

    data_dir = find_data_dir()
    heart = load_heart_scene(ctx.scene, ctx.volumes_logic, data_dir)
    volume = heart.volume
    array = np.array(util.arrayFromVolume(volume))
    from FastMedSAMLib import Session

    session = Session(model="litemedsam", device="cpu")  # the engine alone, beside the Logic's own Session
    figures: Dict[str, Dict[str, float]] = {}
    created = [volume, heart.transform]
    try:
        for view in VIEWS:
            prompt = gt_prompt(ctx, heart, view)
            frame, box = prompt.frame, prompt.box
            assert frame.aligned == (view != "oblique"), f"{view}: aligned={frame.aligned}"
            middle = prompt.plane_box.z
            segmentation, (target_2d, target_3d) = ctx.new_segmentation(f"{view} views", "2D", "3D")
            flat = roi_in_view(ctx.scene, heart, prompt, True, f"{view} 2D box")
            deep = roi_in_view(ctx.scene, heart, prompt, False, f"{view} 3D box")
            created += [segmentation, flat, deep]
            one = ctx.logic.segment_slice(volume, [flat], segmentation, target_2d, None, model="litemedsam",
                                          device="cpu", sliceToRAS=prompt.slice_to_ras)
            assert one.prediction.mask.ndim == 2
            three = ctx.logic.segment_box(volume, deep, segmentation, target_3d, model="litemedsam", device="cpu",
                                          sliceToRAS=prompt.slice_to_ras)
            ctx.logic.accept()
            written_2d = segment_array(ctx.scene, ctx.segmentations_logic, segmentation, target_2d, volume)
            written_3d = segment_array(ctx.scene, ctx.segmentations_logic, segmentation, target_3d, volume)

            session.set_image(frame.image(array))
            expected_2d = engine_mask_in_volume(session, frame, prompt.plane_box, middle, middle)
            expected_3d = engine_mask_in_volume(session, frame, box, box.z0, box.z1)
            assert np.array_equal(written_2d, expected_2d), f"{view}: 2D mask differs from the engine's mapped back"
            assert np.array_equal(written_3d, expected_3d), f"{view}: 3D mask differs from the engine's mapped back"
            if frame.aligned:  # independent of the Logic's mapping: numpy transposition of the engine's own mask
                full = np.zeros(frame.shape, dtype=bool)
                full[middle] = one.prediction.mask
                assert np.array_equal(written_2d, aligned_reference(frame, full)), f"{view}: transposition is off"

            plane, slab = covered(frame, middle, middle), covered(frame, box.z0, box.z1)
            assert not (written_2d & ~plane).any(), f"{view}: the 2D mask left the view's plane"
            truth = heart.label > 0
            score_2d = dice(written_2d[plane], truth[plane])
            score_3d = dice(written_3d[slab], truth[slab])
            figures[view] = {"dice_2d": round(score_2d, 4), "dice_3d": round(score_3d, 4),
                             "planes_3d": box.z1 - box.z0 + 1, "frame_shape": list(frame.shape),
                             "encoder_calls_3d": three.prediction.encoder_calls}
            assert score_2d >= MIN_DICE_2D, f"{view}: 2D Dice {score_2d:.3f} < {MIN_DICE_2D}"
            assert score_3d >= MIN_DICE_3D, f"{view}: 3D Dice {score_3d:.3f} < {MIN_DICE_3D}"
    finally:
        for node in reversed(created):
            ctx.scene.RemoveNode(node)
    return figures


def view_slice_follows_the_view(ctx) -> Dict[str, object]:
    """"Segment this slice" without an index uses the plane the view shows; a 2D box in a sagittal view of the
    lesion CT (5 mm slices) is no longer rejected as degenerate."""
    lesion = ctx.lesion
    centre = [(lesion.box[4] + lesion.box[5]) / 2, (lesion.box[2] + lesion.box[3]) / 2, 6]
    shown: Tuple[int, ...] = ()
    for view in ("Red", "Yellow", "Green"):
        matrix = view_matrix(lesion, view, centre)
        frame = ctx.logic.frame_of_view(lesion.volume, matrix)
        index = ctx.logic.view_slice_index(lesion.volume, matrix)
        expected = frame.ijk_to_index(np.array([centre]))[0][2]
        assert abs(index - expected) <= 0.5, f"{view}: slice {index} vs {expected}"
        shown += (index,)
    return {"slices_shown": shown}
