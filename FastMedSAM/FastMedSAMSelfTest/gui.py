"""The module's GUI path end to end, inside Slicer only (Reload and Test; it needs slicer.app and Qt): the real
widget, boxes placed through the markups API in the Yellow and Green views, segment, Dice against the ground truth,
undo, and the latency overlay still shown after a slice change. Not run by pytest (no Slicer application there)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict

import numpy as np
from slicer import util

from FastMedSAMLib.evaluation.metrics import dice

from . import views
from .scenario import segment_array

MIN_DICE = 0.75
WAIT_S = 300.0


def _wait_idle(widget) -> None:
    import slicer

    deadline = time.monotonic() + WAIT_S
    while widget._timer.isActive():
        if time.monotonic() > deadline:
            raise AssertionError("the prediction did not finish in time")
        slicer.app.processEvents()
        time.sleep(0.02)


def run_gui_test(test_case, data_dir: Path) -> Dict[str, float]:
    import slicer

    heart = views.load_heart_scene(slicer.mrmlScene, slicer.modules.volumes.logic(), data_dir)
    util.setSliceViewerLayers(background=heart.volume, fit=True)
    slicer.util.selectModule("FastMedSAM")
    widget = slicer.modules.FastMedSAMWidget
    widget.ui.inputVolumeSelector.setCurrentNode(heart.volume)
    widget.ui.autoRunCheckBox.checked = False
    widget.ui.showOverlayCheckBox.checked = True
    layout = slicer.app.layoutManager()
    scores: Dict[str, float] = {}

    class Context:  # what views.gt_prompt reads
        logic = widget.logic

    for view in ("Yellow", "Green"):
        prompt = views.gt_prompt(Context, heart, view)
        sliceNode = layout.sliceWidget(view).mrmlSliceNode()
        sliceNode.GetSliceToRAS().DeepCopy(util.vtkMatrixFromArray(prompt.slice_to_ras))
        sliceNode.UpdateMatrices()
        box = widget._promptNode("box_2d")
        views.place_roi_in_view(box, heart, prompt, flat=True)
        widget.onSegmentSlice()
        _wait_idle(widget)
        segmentation = widget.ui.segmentSelector.currentNode()
        segmentId = widget.ui.segmentSelector.currentSegmentID()
        written = segment_array(slicer.mrmlScene, slicer.modules.segmentations.logic(), segmentation, segmentId,
                                heart.volume)
        middle = prompt.plane_box.z
        plane = views.covered(prompt.frame, middle, middle)
        scores[view] = dice(written[plane], heart.label[plane] > 0)
        test_case.assertGreaterEqual(scores[view], MIN_DICE, f"{view}: Dice {scores[view]:.3f}")
        test_case.assertFalse((written & ~plane).any(), f"{view}: the mask left the view's plane")
        widget.onUndo()
        undone = segment_array(slicer.mrmlScene, slicer.modules.segmentations.logic(), segmentation, segmentId,
                               heart.volume)
        test_case.assertFalse(undone.any(), f"{view}: undo left voxels")
        widget.onSegmentSlice()  # again, so that the overlay has something to show
        _wait_idle(widget)

    red = layout.sliceWidget("Red")
    offset = red.sliceLogic().GetSliceOffset()
    red.sliceLogic().SetSliceOffset(offset + 5.0)  # DataProbe rewrites its corner annotation now
    slicer.app.processEvents()
    for name in ("Red", "Yellow", "Green"):
        text = widget._overlay.text(name)
        test_case.assertTrue(text.startswith("FastMedSAM"), f"{name}: overlay text {text!r} after a slice change")
    widget.ui.showOverlayCheckBox.checked = False
    test_case.assertEqual(widget._overlay.text("Red"), "")
    return {view: float(np.round(score, 4)) for view, score in scores.items()}
