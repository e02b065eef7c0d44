"""Test bodies shared by pytest (`Testing/Python/test_slicer_logic.py`, slicer-core) and `FastMedSAMTest` (inside
Slicer). Each takes a `SelfTestContext`, raises AssertionError on failure and returns the figures it measured."""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import vtk

from FastMedSAMLib.errors import FastMedSAMError, PromptError
from FastMedSAMLib.evaluation.metrics import dice
from FastMedSAMLogicLib import FastMedSAMLogic
from FastMedSAMLogicLib.geometry import world_to_ijk
from FastMedSAMLogicLib.overlay import format_overlay
from FastMedSAMLogicLib.parameters import Parameters
from FastMedSAMLogicLib.prompt_nodes import EXCLUDE, INCLUDE, box3d_from_roi, box_from_roi, points_from_nodes
from FastMedSAMLogicLib.segment_io import Region, write_region
from FastMedSAMLogicLib.worker import PredictionWorker

from . import views
from .scenario import (
    LesionScene,
    add_points,
    add_roi_around,
    place_roi,
    segment_array,
    segment_world_centroid,
)

MODEL = "litemedsam"
DEVICE = "cpu"
MIN_DICE_3D = 0.80  # LiteMedSAM with the GT box, middle-out over 3 slices (measured ~0.9)
MIN_DICE_SLICE = 0.80
PAUSE = 0.25  # the speed <-> accuracy knob the pause bodies use
MIN_DICE_PAUSED = 0.80  # LiteMedSAM at pause 0.25 with the GT box, 3 slices, vs ground truth (measured 0.85)
MIN_AGREEMENT_PAUSED = 0.95  # Dice of the pause 0.25 mask vs the plain model's (measured 0.997)
NO_HEADS_MODELS = ("medficientsam-l0", "fastsam3d")  # a 2D box model and a 3D point model without pause heads
EXACT_VOXELS = 1e-4  # markups keep control points in float32: ~1e-5 mm at 300 mm from the origin


@dataclass
class SelfTestContext:
    scene: object
    volumes_logic: object
    segmentations_logic: object
    lesion: LesionScene
    logic: FastMedSAMLogic
    tmp_dir: Path

    def new_segmentation(self, name: str, *segment_names: str) -> Tuple[object, List[str]]:
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
        ids = [node.GetSegmentation().AddEmptySegment("", segment_name) for segment_name in segment_names]
        return node, ids

    def exported(self, segmentation, segment_id: str) -> np.ndarray:
        return segment_array(self.scene, self.segmentations_logic, segmentation, segment_id, self.lesion.volume)


def _gt_box_roi(ctx: SelfTestContext, name: str = "GT box"):
    return add_roi_around(ctx.scene, ctx.lesion, ctx.lesion.box, name)


def geometry_roundtrip(ctx: SelfTestContext) -> Dict[str, float]:
    """World prompts -> voxel prompts are exact through the oblique direction and the parent transform."""
    k0, k1, j0, j1, i0, i1 = ctx.lesion.box
    volume = ctx.lesion.volume
    roi = _gt_box_roi(ctx)
    box = box3d_from_roi(volume, roi)
    got = np.array([box.x0, box.y0, box.z0, box.x1, box.y1, box.z1], dtype=float)
    error = float(np.abs(got - np.array([i0, j0, k0, i1, j1, k1], dtype=float)).max())
    assert error < EXACT_VOXELS, f"ROI -> Box3D is off by {error} voxels: {box} vs GT box {ctx.lesion.box}"
    assert isinstance(box.z0, int) and isinstance(box.z1, int)
    flat = box_from_roi(volume, roi, 6)
    assert flat.z == 6 and abs(flat.x0 - i0) < EXACT_VOXELS and abs(flat.y1 - j1) < EXACT_VOXELS, flat
    try:
        box_from_roi(volume, roi, k1 + 1)
    except PromptError as error_on_other_slice:
        assert f"slice {k1 + 1}" in str(error_on_other_slice)
    else:
        raise AssertionError("an ROI was accepted as a box on a slice it does not cover")

    voxels = [(i0 + 3, j0 + 4, 6), (i1 - 2, j1 - 5, 5)]
    include = add_points(ctx.scene, ctx.lesion, voxels[:1], INCLUDE, "include")
    exclude = add_points(ctx.scene, ctx.lesion, voxels[1:], EXCLUDE, "exclude")
    points = points_from_nodes(volume, [include, exclude])
    assert [p.positive for p in points] == [True, False]
    point_error = max(abs(a - b) for p, v in zip(points, voxels) for a, b in zip((p.x, p.y, p.z), v))
    assert point_error < EXACT_VOXELS, f"world points -> voxels off by {point_error}"

    rng = np.random.default_rng(0)
    ijk = rng.uniform(0, 100, size=(5, 3))
    world = np.array([ctx.lesion.world(p) for p in ijk])
    inverse_error = float(np.abs(world_to_ijk(volume, world) - ijk).max())
    assert inverse_error < 1e-6, f"world_to_ijk is off by {inverse_error}"
    for node in (roi, include, exclude):
        ctx.scene.RemoveNode(node)
    return {"roi_error_vox": error, "point_error_vox": point_error}


def box_propagation(ctx: SelfTestContext) -> Dict[str, object]:
    """3D ROI -> propagation: Dice vs GT, other segments / slices / same-slice content untouched, one undo state."""
    lesion, volume = ctx.lesion, ctx.lesion.volume
    k0, k1, j0, j1, i0, i1 = lesion.box
    segmentation, (target, other) = ctx.new_segmentation("propagation", "lesion", "other")
    ctx.logic.attach_segmentation(volume, segmentation)
    assert segmentation.GetTransformNodeID() == volume.GetTransformNodeID(), "segmentation not under the volume's transform"
    # content that must survive: the target segment on other slices and far away on a prompted slice,
    # and another segment overlapping the lesion
    shape = lesion.label.shape
    full = Region(0, shape[0] - 1, 0, shape[1] - 1, 0, shape[2] - 1)
    sentinel = np.zeros(shape, dtype=bool)
    sentinel[1, 40:60, 40:60] = sentinel[11, 400:430, 100:120] = sentinel[6, 20:40, 20:40] = True
    overlapping = np.zeros(shape, dtype=bool)
    overlapping[4:9, j0 - 5:j1 + 5, i0 - 5:(i0 + i1) // 2] = True
    write_region(segmentation, target, volume, full, sentinel)
    write_region(segmentation, other, volume, full, overlapping)
    target_before, other_before = ctx.exported(segmentation, target), ctx.exported(segmentation, other)
    assert np.array_equal(target_before, sentinel) and np.array_equal(other_before, overlapping)

    roi = _gt_box_roi(ctx)
    undo_depth = len(ctx.logic.undo_stack)
    result = ctx.logic.segment_box(volume, roi, segmentation, target, model=MODEL, device=DEVICE)
    after = ctx.exported(segmentation, target)

    assert result.prediction.z_range == (k0, k1), result.prediction.z_range
    assert (result.region.k0, result.region.k1) == (k0, k1)
    predicted = after & ~sentinel
    score = dice(predicted[k0:k1 + 1], lesion.label[k0:k1 + 1])
    assert score >= MIN_DICE_3D, f"Dice {score:.3f} < {MIN_DICE_3D}"
    outside = np.ones(shape[0], dtype=bool)
    outside[k0:k1 + 1] = False
    assert np.array_equal(after[outside], target_before[outside]), "slices outside the ROI changed"
    assert after[sentinel].all(), "content of the segment outside the prompt region was erased"
    assert not predicted[outside].any()
    assert np.array_equal(ctx.exported(segmentation, other), other_before), "another segment changed"
    assert segmentation.GetTransformNodeID() == volume.GetTransformNodeID(), "segmentation not under the volume's transform"
    assert len(ctx.logic.undo_stack) == undo_depth + 1, "one prompt must make exactly one undo state"

    text = result.overlay_text
    assert text == format_overlay(result.record)
    assert MODEL in text and f"({DEVICE})" in text, text
    timings = result.timings
    assert set(timings) >= {"preprocess", "encode", "decode", "postprocess", "total"}, timings
    if result.prediction.encoder_calls:
        assert "encode cached" not in text and "encode " in text
    assert "decode" in text and "total" in text and "logic" in text
    assert set(result.logic_timings) == {"extract", "prompts", "set_image", "write", "total"}
    assert ctx.logic.history.last is result.record

    assert ctx.logic.undo() is True
    assert np.array_equal(ctx.exported(segmentation, target), target_before), "undo did not restore the segment"
    assert np.array_equal(ctx.exported(segmentation, other), other_before)
    ctx.scene.RemoveNode(roi)
    ctx.scene.RemoveNode(segmentation)
    return {
        "dice_3d": score,
        "slices": k1 - k0 + 1,
        "encoder_calls": result.prediction.encoder_calls,
        "session_ms": timings,
        "logic_ms": result.logic_timings,
        "overlay": text,
    }


def slice_prompt(ctx: SelfTestContext) -> Dict[str, object]:
    """2D box on one slice; re-prompting refines (replaces) the pending result; the repeat is a cache hit."""
    lesion, volume = ctx.lesion, ctx.lesion.volume
    k0, k1, j0, j1, i0, i1 = lesion.box
    k = (k0 + k1) // 2
    ks, js, is_ = np.nonzero(lesion.label[k:k + 1])
    slice_box = (k, k, int(js.min()), int(js.max()), int(is_.min()), int(is_.max()))
    loose = (k, k, slice_box[2] - 15, slice_box[3] + 15, slice_box[4] - 15, slice_box[5] + 15)
    segmentation, (target,) = ctx.new_segmentation("slice", "lesion")
    roi = add_roi_around(ctx.scene, lesion, loose, "slice box")
    first = ctx.logic.segment_slice(volume, [roi], segmentation, target, k, model=MODEL, device=DEVICE)
    first_state = ctx.exported(segmentation, target)
    assert np.array_equal(first_state[k], first.mask) and not np.delete(first_state, k, axis=0).any()

    # dragging the same ROI tighter: a refinement that replaces the pending result; the slice is cached now
    place_roi(roi, lesion, slice_box)
    ctx.logic.segment_slice(volume, [roi], segmentation, target, k, model=MODEL, device=DEVICE)
    repeat = ctx.logic.segment_slice(volume, [roi], segmentation, target, k, model=MODEL, device=DEVICE)
    assert repeat.prediction.encoder_calls == 0 and repeat.timings["encode"] == 0.0, repeat.timings
    assert "encode cached" in repeat.overlay_text, repeat.overlay_text
    state = ctx.exported(segmentation, target)
    assert np.array_equal(state[k], repeat.mask), "the refined result must replace the pending one on the slice"
    assert not np.delete(state, k, axis=0).any(), "a slice prompt wrote outside its slice"
    score = dice(state[k], lesion.label[k])
    assert score >= MIN_DICE_SLICE, f"slice Dice {score:.3f} < {MIN_DICE_SLICE}"

    assert ctx.logic.undo()
    ctx.logic.undo()
    assert np.array_equal(ctx.exported(segmentation, target), first_state), "undo did not step back one prompt"
    assert ctx.logic.clear() >= 1
    assert not ctx.exported(segmentation, target).any(), "clear did not remove the pending results"
    for node in (roi, segmentation):
        ctx.scene.RemoveNode(node)
    return {"dice_slice": score, "session_ms": repeat.timings, "logic_ms": repeat.logic_timings,
            "overlay": repeat.overlay_text}


def points_on_box_model(ctx: SelfTestContext) -> Dict[str, object]:
    """A box-only model refuses points with a clear error, and nothing is written or lost."""
    lesion = ctx.lesion
    k0, k1, j0, j1, i0, i1 = lesion.box
    segmentation, (target,) = ctx.new_segmentation("points", "lesion")
    include = add_points(ctx.scene, lesion, [((i0 + i1) / 2, (j0 + j1) / 2, 6)], INCLUDE, "click")
    depth = len(ctx.logic.undo_stack)
    try:
        ctx.logic.segment_slice(lesion.volume, [include], segmentation, target, 6, model=MODEL, device=DEVICE)
    except PromptError as error:
        message = str(error)
    else:
        raise AssertionError("a box-only model accepted a point prompt")
    assert "box" in message, message
    assert len(ctx.logic.undo_stack) == depth and not ctx.exported(segmentation, target).any()
    for node in (include, segmentation):
        ctx.scene.RemoveNode(node)
    return {"error": message}


def transform_and_export(ctx: SelfTestContext) -> Dict[str, object]:
    """The mask lands on the lesion in world space; .seg.nrrd export and reload keep masks and geometry."""
    from slicer import vtkMRMLSegmentationStorageNode, vtkOrientedImageData, vtkSlicerSegmentationsModuleLogic

    lesion, volume = ctx.lesion, ctx.lesion.volume
    k0, k1 = lesion.box[:2]
    segmentation, (target,) = ctx.new_segmentation("export", "lesion")
    roi = _gt_box_roi(ctx)
    ctx.logic.segment_box(volume, roi, segmentation, target, model=MODEL, device=DEVICE)
    # the segment's voxels, taken to world by Slicer (labelmap geometry + the segmentation's transform), must sit
    # where the volume's voxels with the same indices are (volume geometry + its transform), and on the lesion
    predicted_ijk = np.argwhere(ctx.exported(segmentation, target))[:, ::-1].mean(axis=0)
    geometry_error = float(np.linalg.norm(segment_world_centroid(segmentation, target) - lesion.world(predicted_ijk)))
    assert geometry_error < 0.01, f"segment voxels are {geometry_error:.3f} mm from their volume voxels in world space"
    gt_ijk = np.argwhere(lesion.label[k0:k1 + 1])[:, ::-1].mean(axis=0) + (0, 0, k0)
    offset = float(np.linalg.norm(segment_world_centroid(segmentation, target) - lesion.world(gt_ijk)))
    assert offset < 5.0, f"segment centroid is {offset:.2f} mm from the lesion's in world space"

    path = ctx.tmp_dir / "lesion.seg.nrrd"
    storage = vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(segmentation), f"could not write {path}"
    reloaded = ctx.segmentations_logic.LoadSegmentationFromFile(str(path), True, "reloaded")
    assert reloaded is not None, f"could not read {path}"
    reloaded.SetAndObserveTransformNodeID(segmentation.GetTransformNodeID())
    reloaded_id = reloaded.GetSegmentation().GetSegmentIdBySegmentName("lesion")
    assert reloaded_id, "segment name lost in .seg.nrrd"
    assert np.array_equal(ctx.exported(reloaded, reloaded_id), ctx.exported(segmentation, target))

    def image_to_segmentation(node, segment_id) -> np.ndarray:
        image = vtkOrientedImageData()
        vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(node, segment_id, image, False)
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    volume_matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(volume_matrix)
    volume_axes = np.array([[volume_matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
    saved = image_to_segmentation(reloaded, reloaded_id)
    axes_error = float(np.abs(saved[:3, :3] - volume_axes).max())
    assert axes_error < 1e-6, f".seg.nrrd changed the voxel axes by {axes_error}"
    assert np.abs(saved - image_to_segmentation(segmentation, target)).max() < 1e-6

    # the segment follows the volume when the transform moves
    moved = vtk.vtkMatrix4x4()
    lesion.transform.GetMatrixTransformToParent(moved)
    moved.SetElement(0, 3, moved.GetElement(0, 3) + 25.0)
    lesion.transform.SetMatrixTransformToParent(moved)
    try:
        shift = segment_world_centroid(segmentation, target) - lesion.world(predicted_ijk)
        assert np.linalg.norm(shift) < 0.01, "the segment did not move with the volume's transform"
    finally:
        moved.SetElement(0, 3, moved.GetElement(0, 3) - 25.0)
        lesion.transform.SetMatrixTransformToParent(moved)
    ctx.logic.accept()
    for node in (roi, segmentation, reloaded):
        ctx.scene.RemoveNode(node)
    return {"geometry_error_mm": geometry_error, "centroid_to_gt_mm": offset, "axes_error": axes_error,
            "seg_nrrd": str(path)}


def parameter_node_roundtrip(ctx: SelfTestContext) -> Dict[str, object]:
    """Saving and reloading the scene keeps the module's parameters (the pause knob too) and node references."""
    from slicer import vtkMRMLScene

    segmentation, (target,) = ctx.new_segmentation("saved", "lesion")
    params = ctx.logic.parameters
    assert params.pause == 0.0, f"the pause knob must default to the plain model, got {params.pause}"
    params.set_pause(0.35)
    for bad in (1.5, -0.1, float("nan"), "fast", True):
        try:
            params.set_pause(bad)
        except FastMedSAMError as error:
            assert "[0, 1]" in str(error), error
        else:
            raise AssertionError(f"the parameter node took pause {bad!r}")
    assert params.pause == 0.35, "a refused pause value changed the stored one"
    params.set_reference("InputVolume", ctx.lesion.volume)
    params.set_reference("Segmentation", segmentation)
    params.set("SegmentID", target)
    params.set("Model", MODEL)
    params.set("Device", DEVICE)
    params.set_flag("ShowOverlay", False)
    root = ctx.scene.GetRootDirectory()
    ctx.scene.SetRootDirectory(str(ctx.tmp_dir))  # storage file names are written relative to the scene root
    try:
        ctx.scene.SetSaveToXMLString(1)
        ctx.scene.Commit()
        xml = ctx.scene.GetSceneXMLString()
    finally:
        ctx.scene.SetSaveToXMLString(0)
        ctx.scene.SetRootDirectory(root)
    restored_scene = vtkMRMLScene()
    restored_scene.SetRootDirectory(str(ctx.tmp_dir))
    restored_scene.SetLoadFromXMLString(1)
    restored_scene.SetSceneXMLString(xml)
    restored_scene.Import()
    restored = Parameters.get_or_create(restored_scene)
    assert restored.node.GetID() == params.node.GetID()
    assert restored.reference("InputVolume").GetName() == ctx.lesion.volume.GetName()
    assert restored.reference("Segmentation").GetName() == "saved"
    assert (restored.segment_id, restored.model, restored.device) == (target, MODEL, DEVICE)
    assert restored.flag("ShowOverlay") is False
    assert restored.pause == 0.35, restored.get("Pause")
    restored.set("Pause", "fast")  # a hand-edited scene file
    try:
        restored.pause
    except FastMedSAMError as error:
        assert "'fast'" in str(error) and "[0, 1]" in str(error), error
    else:
        raise AssertionError("a corrupt Pause parameter was read as a number")
    params.set_flag("ShowOverlay", True)
    params.set_pause(0.0)
    ctx.scene.RemoveNode(segmentation)
    restored_scene.Clear(1)
    return {"parameters": restored.node.GetParameterNamesAsCommaSeparatedList()}


def pause_knob(ctx: SelfTestContext) -> Dict[str, object]:
    """The speed <-> accuracy knob on the same warm Session: a paused run keeps a high Dice and the overlay says how
    many tokens paused; back at 0 the output is bit-identical to a Session that never paused, from the cache,
    without reloading the model."""
    lesion, volume = ctx.lesion, ctx.lesion.volume
    k0, k1 = lesion.box[:2]
    slices = k1 - k0 + 1
    segmentation, (target,) = ctx.new_segmentation("pause", "lesion")
    roi = _gt_box_roi(ctx)

    fresh = FastMedSAMLogic(ctx.scene)  # its own Session, which never pauses
    try:
        request = fresh.prepare_box(volume, roi, segmentation, target, MODEL, DEVICE)
        never = fresh.predict(request).prediction
        assert fresh.session(MODEL, DEVICE).pause == 0.0 and never.paused_by_block is None
    finally:
        fresh.cleanup()

    plain = ctx.logic.segment_box(volume, roi, segmentation, target, model=MODEL, device=DEVICE, pause=0.0)
    session = ctx.logic.session(MODEL, DEVICE)
    paused = ctx.logic.segment_box(volume, roi, segmentation, target, model=MODEL, device=DEVICE, pause=PAUSE)
    assert ctx.logic.session(MODEL, DEVICE) is session, "changing the knob must not recreate the Session"
    assert session.pause == PAUSE, session.pause
    assert paused.prediction.encoder_calls == slices, "slices encoded at knob 0 were reused at another knob"
    fraction = paused.prediction.paused_fraction
    assert 0.0 < fraction < 1.0, f"pause {PAUSE} paused {fraction:.3f} of the tokens"
    assert (paused.record.pause, paused.record.paused_fraction) == (PAUSE, fraction)
    assert f"pause {PAUSE:g} · {fraction:.0%} tokens paused" in paused.overlay_text.splitlines(), paused.overlay_text
    state = ctx.exported(segmentation, target)
    assert np.array_equal(state[k0:k1 + 1], paused.mask[k0:k1 + 1]), "the paused result did not replace the plain one"
    score = dice(state[k0:k1 + 1], lesion.label[k0:k1 + 1])
    assert score >= MIN_DICE_PAUSED, f"Dice at pause {PAUSE}: {score:.3f} < {MIN_DICE_PAUSED}"
    agreement = dice(paused.mask, never.mask)
    assert agreement >= MIN_AGREEMENT_PAUSED, f"pause {PAUSE} strays from the plain model: Dice {agreement:.3f}"

    back = ctx.logic.segment_box(volume, roi, segmentation, target, model=MODEL, device=DEVICE, pause=0.0)
    assert ctx.logic.session(MODEL, DEVICE) is session and session.pause == 0.0
    assert back.prediction.encoder_calls == 0 and back.timings["encode"] == 0.0, back.timings
    assert np.array_equal(back.mask, never.mask), "knob 0 after pausing differs from a Session that never paused"
    assert np.array_equal(plain.mask, never.mask)
    assert back.prediction.paused_fraction == 0.0 and "pause" not in back.overlay_text, back.overlay_text
    assert np.array_equal(ctx.exported(segmentation, target), never.mask)

    ctx.logic.clear()
    for node in (roi, segmentation):
        ctx.scene.RemoveNode(node)
    return {
        "pause": PAUSE,
        "paused_fraction": fraction,
        "dice_paused": score,
        "dice_paused_vs_plain": agreement,
        "dice_plain": dice(never.mask[k0:k1 + 1], lesion.label[k0:k1 + 1]),
        "encode_ms_plain_fresh_session": never.timings["encode"],  # includes the new Session's first-call warm-up
        "encode_ms_paused": paused.timings["encode"],
        "paused_by_block": paused.prediction.paused_by_block,
        "session_ms": paused.timings,
        "logic_ms": paused.logic_timings,
        "encoder_calls": paused.prediction.encoder_calls,
        "slices": slices,
        "overlay": paused.overlay_text,
    }


def pause_knob_checks(ctx: SelfTestContext) -> Dict[str, object]:
    """A bad knob is refused before anything runs; a model without pause heads runs plain and says so."""
    from FastMedSAMLib.pause import PauseError

    lesion, volume = ctx.lesion, ctx.lesion.volume
    segmentation, (target,) = ctx.new_segmentation("pause checks", "lesion")
    roi = _gt_box_roi(ctx)
    depth = len(ctx.logic.undo_stack)
    for bad in (1.5, -0.25, float("nan"), "fast"):
        try:
            ctx.logic.segment_box(volume, roi, segmentation, target, model=MODEL, device=DEVICE, pause=bad)
        except PauseError as error:
            assert "[0, 1]" in str(error), error
        else:
            raise AssertionError(f"pause {bad!r} was accepted")
    assert len(ctx.logic.undo_stack) == depth and not ctx.exported(segmentation, target).any()

    notes = {}
    k0, k1, j0, j1, i0, i1 = lesion.box
    click = add_points(ctx.scene, lesion, [((i0 + i1) / 2, (j0 + j1) / 2, 6)], INCLUDE, "click")
    for model in NO_HEADS_MODELS:
        if model == "fastsam3d":
            request = ctx.logic.prepare_points(volume, [click], segmentation, target, model, DEVICE, pause=PAUSE)
        else:
            request = ctx.logic.prepare_box(volume, roi, segmentation, target, model, DEVICE, pause=PAUSE)
        assert request.pause == 0.0, f"{model} has no pause heads but would run at pause {request.pause}"
        assert request.pause_note.startswith(f"pause {PAUSE:g} not applied: {model} has no token-pause heads"), \
            request.pause_note
        assert MODEL in request.pause_note, "the note should name the models that do pause"
        assert ctx.logic.prepare_box(volume, roi, segmentation, target, model, DEVICE, pause=0.0).pause_note == ""
        notes[model] = request.pause_note
    assert ctx.logic.prepare_box(volume, roi, segmentation, target, MODEL, DEVICE, pause=PAUSE).pause == PAUSE
    for node in (roi, click, segmentation):
        ctx.scene.RemoveNode(node)
    return {"notes": notes}


def prompt_events(ctx: SelfTestContext) -> Dict[str, object]:
    """Placing a point on a watched prompt node reaches the callback once, with the node."""
    node = ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "watched")
    calls: List[object] = []
    ctx.logic.watch_prompt_nodes([node], calls.append)
    node.AddControlPointWorld(vtk.vtkVector3d(*ctx.lesion.world((100, 100, 6))))
    assert calls == [node], calls
    ctx.logic.unwatch_prompt_nodes()
    node.AddControlPointWorld(vtk.vtkVector3d(*ctx.lesion.world((110, 100, 6))))
    assert len(calls) == 1, "events still arrive after unwatch"
    ctx.scene.RemoveNode(node)
    return {"events": len(calls)}


def roi_prompt_runs_once_complete(ctx: SelfTestContext) -> Dict[str, object]:
    """An ROI placed with two clicks (Slicer's placement: one control point per click) reaches the callback once,
    after the second click, never after the first (the box is empty then); ending a handle drag runs it again."""
    roi = ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "two-click box")
    calls: List[object] = []
    ctx.logic.watch_prompt_nodes([roi], calls.append)
    roi.AddControlPointWorld(vtk.vtkVector3d(*ctx.lesion.world((100, 100, 6))))
    assert calls == [], "an ROI prompt ran on its first click"
    roi.AddControlPointWorld(vtk.vtkVector3d(*ctx.lesion.world((140, 130, 6))))
    assert calls == [roi], calls
    roi.InvokeEvent(roi.PointEndInteractionEvent)
    assert len(calls) == 2, "the end of a handle drag did not re-run the prompt"
    ctx.logic.unwatch_prompt_nodes()
    ctx.scene.RemoveNode(roi)
    return {"runs": len(calls)}


def default_volume_is_selectable(ctx: SelfTestContext) -> Dict[str, object]:
    """The default input volume is one the selector shows: a labelmap added first is skipped."""
    labelmap = ctx.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a labelmap")
    ctx.scene.RemoveNode(ctx.lesion.volume)
    ctx.scene.AddNode(ctx.lesion.volume)  # now after the labelmap in the scene's order
    try:
        first = ctx.scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        chosen = FastMedSAMLogic.default_input_volume(ctx.scene)
        assert first is labelmap, "precondition: GetFirstNodeByClass returns the labelmap"
        assert chosen is ctx.lesion.volume, chosen
    finally:
        ctx.scene.RemoveNode(labelmap)
    return {"chosen": chosen.GetName()}


def view_of_prompt(ctx: SelfTestContext) -> Dict[str, object]:
    """Which view a prompt was drawn in: the one whose plane holds it; the pointer's view wins a tie."""
    lesion = ctx.lesion
    centre = ((lesion.box[4] + lesion.box[5]) / 2, (lesion.box[2] + lesion.box[3]) / 2, 6)
    matrices = [(name, views.view_matrix(lesion, name, centre)) for name in ("Red", "Yellow", "Green")]
    shifted = views.view_matrix(lesion, "Yellow", (centre[0] + 20, centre[1], centre[2]))
    point = ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicked in Yellow")
    point.AddControlPointWorld(vtk.vtkVector3d(*lesion.world((centre[0] + 20, centre[1] - 30, 4))))
    try:
        views_now = [("Red", matrices[0][1]), ("Yellow", shifted), ("Green", matrices[2][1])]
        assert ctx.logic.view_of_prompt(point, views_now, preferred="Red") == "Yellow"
        on_all = ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "at the crossing")
        on_all.AddControlPointWorld(vtk.vtkVector3d(*lesion.world(centre)))
        assert ctx.logic.view_of_prompt(on_all, matrices, preferred="Green") == "Green"
        assert ctx.logic.view_of_prompt(on_all, matrices) == "Red"
        ctx.scene.RemoveNode(on_all)
        step = ctx.logic.plane_step(lesion.volume, shifted)
        assert abs(step - lesion.volume.GetSpacing()[0]) < 1e-6, step  # the Yellow view's normal is the I axis
    finally:
        ctx.scene.RemoveNode(point)
    return {"yellow_plane_step_mm": step}


def worker_supersedes(ctx: SelfTestContext) -> Dict[str, object]:
    """On the persistent worker thread: newest request wins, errors come back as outcomes."""
    lesion = ctx.lesion
    segmentation, (target,) = ctx.new_segmentation("worker", "lesion")
    roi = _gt_box_roi(ctx)
    click = add_points(ctx.scene, lesion, [(lesion.box[4] + 10, lesion.box[2] + 10, 6)], INCLUDE, "click")
    requests = [ctx.logic.prepare_slice(lesion.volume, [roi], segmentation, target, k, MODEL, DEVICE) for k in (5, 6, 7)]
    worker = PredictionWorker(ctx.logic.predict)
    try:
        tickets = [worker.submit(r) for r in requests]
        assert worker.wait_idle(120)
        outcomes = worker.poll()
        assert [o.ticket for o in outcomes] == [tickets[-1]], [o.ticket for o in outcomes]
        assert outcomes[0].error is None and outcomes[0].request is requests[-1]
        result = ctx.logic.apply(outcomes[0].request, outcomes[0].result)
        assert result.region.k0 == result.region.k1 == 7
        bad = ctx.logic.prepare_slice(lesion.volume, [click], segmentation, target, 6, MODEL, DEVICE)
        worker.submit(bad)
        assert worker.wait_idle(120)
        (failed,) = worker.poll()
        assert isinstance(failed.error, PromptError), failed.error
    finally:
        worker.close()
    ctx.logic.clear()
    for node in (roi, click, segmentation):
        ctx.scene.RemoveNode(node)
    return {"superseded": len(tickets) - 1, "error": str(failed.error)}


def prefetch_follows_the_view(ctx: SelfTestContext) -> Dict[str, object]:
    """Scrolling a view queues a background prefetch of the slices around the one it shows: it waits behind a
    prompt on the worker (never ahead of it, never superseding it), and once it ran, a prompt on a prefetched
    slice skips the encoder and writes the same mask. Nothing is queued where it cannot help."""
    lesion, volume = ctx.lesion, ctx.lesion.volume
    centre = [(lesion.box[4] + lesion.box[5]) / 2, (lesion.box[2] + lesion.box[3]) / 2, (lesion.box[0] + lesion.box[1]) / 2]
    red = views.view_matrix(lesion, "Red", centre)
    k = ctx.logic.view_slice_index(volume, red)
    segmentation, (target,) = ctx.new_segmentation("prefetch", "lesion")
    roi = _gt_box_roi(ctx)
    cold = ctx.logic.segment_slice(volume, [roi], segmentation, target, k, model=MODEL, device=DEVICE)
    ctx.logic.clear()
    session = ctx.logic.session(MODEL, DEVICE)
    session.clear_cache()

    background = ctx.logic.prepare_prefetch(volume, MODEL, DEVICE, slice_to_ras=red, radius=2)
    assert background is not None and background.slice_index == k and background.prefetch_slices == (k - 2, k + 2)
    prompt = ctx.logic.prepare_slice(volume, [roi], segmentation, target, k + 1, MODEL, DEVICE)
    worker = PredictionWorker(ctx.logic.predict)
    try:
        worker.submit_background(background)
        ticket = worker.submit(prompt)
        assert worker.wait_idle(300)
        (outcome,) = worker.poll()  # the prompt's outcome only: the background lane reports nothing
        assert outcome.ticket == ticket and outcome.error is None
    finally:
        worker.close()
    deadline = time.monotonic() + 300
    while session.cache_info()["entries"] < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session.cache_info()["entries"] == 5, session.cache_info()
    warm = ctx.logic.segment_slice(volume, [roi], segmentation, target, k, model=MODEL, device=DEVICE)
    assert warm.prediction.encoder_calls == 0, "the prefetched slice was encoded again"
    assert np.array_equal(warm.mask, cold.mask), "prefetch changed a result"

    oblique = views.view_matrix(lesion, "oblique", centre)
    assert ctx.logic.prepare_prefetch(volume, MODEL, DEVICE, slice_to_ras=oblique) is None
    assert ctx.logic.prepare_prefetch(volume, "fastsam3d", DEVICE, slice_to_ras=red) is None
    ctx.logic.clear()
    for node in (roi, segmentation):
        ctx.scene.RemoveNode(node)
    return {"slice": k, "prefetched": background.prefetch_slices, "warm_encoder_calls": warm.prediction.encoder_calls}


REFINE_MODEL = "litemedsam-refine"


def refine_clicks(ctx: SelfTestContext) -> Dict[str, object]:
    """litemedsam-refine: a loose box on a slice, then include/exclude clicks where the result is most wrong; each
    click refines the segment on that slice (its mask goes back as the prompt) and is one undo step."""
    from FastMedSAMLib.refine.clicks import deepest_error_click

    lesion, volume = ctx.lesion, ctx.lesion.volume
    k0, k1, j0, j1, i0, i1 = lesion.box
    k = (k0 + k1) // 2
    truth = lesion.label[k] > 0
    segmentation, (target,) = ctx.new_segmentation("refine", "lesion")
    roi = add_roi_around(ctx.scene, lesion, (k, k, j0 - 15, j1 + 15, i0 - 15, i1 + 15), "loose box")
    first = ctx.logic.segment_slice(volume, [roi], segmentation, target, k, model=REFINE_MODEL, device=DEVICE)
    states, dices = [ctx.exported(segmentation, target)], [dice(first.mask, truth)]
    include = add_points(ctx.scene, lesion, [], INCLUDE, "include")
    exclude = add_points(ctx.scene, lesion, [], EXCLUDE, "exclude")
    for _ in range(2):
        click = deepest_error_click(states[-1][k], truth)
        if click is None:
            break
        (j, i), positive = click
        node = include if positive else exclude
        node.AddControlPointWorld(vtk.vtkVector3d(*lesion.world((i, j, k))))
        ctx.logic.segment_slice(volume, [roi, include, exclude], segmentation, target, k, model=REFINE_MODEL,
                                device=DEVICE)
        states.append(ctx.exported(segmentation, target))
        dices.append(dice(states[-1][k], truth))
        assert not np.delete(states[-1], k, axis=0).any(), "a click wrote outside its slice"
    assert dices[-1] >= dices[0] - 0.01, f"clicks made the slice worse: {dices}"
    for state in reversed(states[:-1]):  # one undo step per click
        assert ctx.logic.undo()
        assert np.array_equal(ctx.exported(segmentation, target), state), "undo did not step back one click"
    ctx.logic.clear()
    for node in (roi, include, exclude, segmentation):
        ctx.scene.RemoveNode(node)
    return {"dice_per_step": dices}


def refine_clicks_3d(ctx: SelfTestContext) -> Dict[str, object]:
    """litemedsam-refine on a 3D box: a click where the propagated object is most wrong sends the segment's volume
    as the previous mask with the box; the corrected, re-propagated object is written whole, equals the Session's
    own answer to the same prompts voxel for voxel, and each click is one undo step."""
    from FastMedSAMLib.prompts import Point
    from FastMedSAMLib.refine.clicks import deepest_error_click

    lesion, volume = ctx.lesion, ctx.lesion.volume
    k0, k1 = lesion.box[0], lesion.box[1]
    truth = np.zeros(lesion.label.shape, dtype=bool)
    truth[k0:k1 + 1] = lesion.label[k0:k1 + 1] > 0  # the object on the box's slices, which clicks can reach
    segmentation, (target,) = ctx.new_segmentation("refine 3D", "lesion")
    roi = _gt_box_roi(ctx, "3D box")
    first = ctx.logic.segment_box(volume, roi, segmentation, target, model=REFINE_MODEL, device=DEVICE)
    states, dices = [ctx.exported(segmentation, target)], [dice(ctx.exported(segmentation, target), truth)]
    include = add_points(ctx.scene, lesion, [], INCLUDE, "include")
    exclude = add_points(ctx.scene, lesion, [], EXCLUDE, "exclude")
    points = []
    for _ in range(2):
        click = deepest_error_click(states[-1], truth)  # the deepest voxel of the largest 3D error component
        if click is None:
            break
        (k, j, i), positive = click
        (include if positive else exclude).AddControlPointWorld(vtk.vtkVector3d(*lesion.world((i, j, k))))
        points.append(Point(float(i), float(j), float(k), positive=positive))
        request = ctx.logic.prepare_box(volume, roi, segmentation, target, REFINE_MODEL, DEVICE,
                                        point_nodes=[include, exclude])
        assert request.points is not None and np.array_equal(request.previous_mask, states[-1])
        expected = ctx.logic.session(REFINE_MODEL, DEVICE).predict(box=request.box, points=points, mask=states[-1]).mask
        ctx.logic.apply(request, ctx.logic.predict(request))
        states.append(ctx.exported(segmentation, target))
        assert np.array_equal(states[-1], expected), "the written object is not the Session's refined object"
        dices.append(dice(states[-1], truth))
    assert len(states) > 1, "the propagated object had no error to click on"
    for state in reversed(states[:-1]):  # one undo step per click
        assert ctx.logic.undo()
        assert np.array_equal(ctx.exported(segmentation, target), state), "undo did not step back one click"
    try:
        ctx.logic.prepare_box(volume, roi, segmentation, target, MODEL, DEVICE, point_nodes=[include])
        raise AssertionError("a box-only model took clicks on a 3D box")
    except PromptError:
        pass
    ctx.logic.clear()
    for node in (roi, include, exclude, segmentation):
        ctx.scene.RemoveNode(node)
    return {"volume_dice_per_step": dices, "box_encoder_calls": first.prediction.encoder_calls}


BODIES: Tuple[Tuple[str, Callable[[SelfTestContext], Dict[str, object]]], ...] = (
    ("geometry_roundtrip", geometry_roundtrip),
    ("box_propagation", box_propagation),
    ("slice_prompt", slice_prompt),
    ("points_on_box_model", points_on_box_model),
    ("transform_and_export", transform_and_export),
    ("parameter_node_roundtrip", parameter_node_roundtrip),
    ("pause_knob", pause_knob),
    ("pause_knob_checks", pause_knob_checks),
    ("prompt_events", prompt_events),
    ("worker_supersedes", worker_supersedes),
    ("roi_prompt_runs_once_complete", roi_prompt_runs_once_complete),
    ("default_volume_is_selectable", default_volume_is_selectable),
    ("view_of_prompt", view_of_prompt),
    ("prompts_in_any_view", views.prompts_in_any_view),
    ("view_slice_follows_the_view", views.view_slice_follows_the_view),
    ("refine_clicks", refine_clicks),
    ("refine_clicks_3d", refine_clicks_3d),
    ("prefetch_follows_the_view", prefetch_follows_the_view),
)


def temporary_directory() -> Path:
    return Path(tempfile.mkdtemp(prefix="FastMedSAMTest-"))
