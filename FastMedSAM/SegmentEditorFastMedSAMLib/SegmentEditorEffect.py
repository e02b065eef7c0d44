"""Segment Editor effect "FastMedSAM": click points or drag a box in a slice view, the model fills the selected
segment. Writes go through the editor (`modifySegmentByLabelmap` on its `defaultModifierLabelmap()` geometry), so
its undo, editable-area masking, editable intensity range and overlap rules apply, next to Paint and Erase. Prompts
are placed by the effect itself, so it stays active; any slice view works (the model segments in that view's plane).
"""
import contextlib
import logging
import os
import time

import numpy as np
import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from FastMedSAMLogicLib.libpath import ensure_engine_importable

ensure_engine_importable()

from FastMedSAMLib.errors import FastMedSAMError, PromptError  # noqa: E402
from FastMedSAMLib.weights.registry import get_spec, list_specs  # noqa: E402
from FastMedSAMLogicLib import dependencies, segment_io, shared  # noqa: E402
from FastMedSAMLogicLib.model_catalog import model_info  # noqa: E402
from FastMedSAMLogicLib.parameters import Parameters  # noqa: E402
from FastMedSAMLogicLib.prompt_nodes import EXCLUDE, INCLUDE, set_role  # noqa: E402

TOOLS = ("include", "exclude", "box")
OWNER = "segment-editor"  # its name on the shared prediction channel
POLL_MS = 50


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "FastMedSAM"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.logic = None
        self.worker = None
        self.nodes = {}
        self.dragStart = None
        self.lastView = None  # the slice widget the last prompt was placed in
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.poll)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        cloned = effects.qSlicerSegmentEditorScriptedEffect(None)
        cloned.setPythonSource(__file__.replace("\\", "/"))
        return cloned

    def icon(self):
        path = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return (
            "<html>Segment with an efficient Segment-Anything model.<p>"
            "<b>Include / Exclude</b>: click in a slice view. <b>Box</b>: drag a box on the current slice. "
            "The selected segment is updated on that slice; <b>Propagate to 3D</b> extends the box over the chosen "
            "slices. The editor's undo, editable area and overlap settings apply.</html>"
        )

    # -- options -------------------------------------------------------------------------------------------
    def setupOptionsFrame(self):
        self.modelComboBox = qt.QComboBox()
        for spec in list_specs():
            if spec.role == "model" and spec.dimensionality == "2D":
                self.modelComboBox.addItem(spec.name)
        self.modelComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.scriptedEffect.addLabeledOptionsWidget("Model:", self.modelComboBox)

        self.toolButtons = {}
        toolLayout = qt.QHBoxLayout()
        group = qt.QButtonGroup(self.scriptedEffect.optionsFrame())
        for tool, label in zip(TOOLS, ("Include point", "Exclude point", "Box")):
            button = qt.QPushButton(label)
            button.checkable = True
            group.addButton(button)
            toolLayout.addWidget(button)
            self.toolButtons[tool] = button
        self.toolButtons["box"].checked = True
        self.scriptedEffect.addLabeledOptionsWidget("Prompt:", toolLayout)

        self.sliceRangeSpinBox = qt.QSpinBox()
        self.sliceRangeSpinBox.setRange(0, 500)
        self.sliceRangeSpinBox.setValue(5)
        self.sliceRangeSpinBox.setToolTip("Propagate to 3D covers the box's slice plus this many slices on each side")
        self.scriptedEffect.addLabeledOptionsWidget("3D extent (slices each side):", self.sliceRangeSpinBox)

        buttons = qt.QHBoxLayout()
        self.segmentSliceButton = qt.QPushButton("Segment slice")
        self.propagateButton = qt.QPushButton("Propagate to 3D")
        self.clearPromptsButton = qt.QPushButton("Clear prompts")
        for button in (self.segmentSliceButton, self.propagateButton, self.clearPromptsButton):
            buttons.addWidget(button)
        self.scriptedEffect.addOptionsWidget(buttons)
        self.segmentSliceButton.connect("clicked()", lambda: self.run(slice_only=True))
        self.propagateButton.connect("clicked()", lambda: self.run(slice_only=False))
        self.clearPromptsButton.connect("clicked()", self.clearPrompts)

        self.latencyLabel = qt.QLabel("")
        self.scriptedEffect.addOptionsWidget(self.latencyLabel)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Model", "litemedsam")

    def updateGUIFromMRML(self):
        wasBlocked = self.modelComboBox.blockSignals(True)
        self.modelComboBox.setCurrentIndex(max(self.modelComboBox.findText(self.scriptedEffect.parameter("Model")), 0))
        self.modelComboBox.blockSignals(wasBlocked)

    def updateMRMLFromGUI(self, *unused):
        self.scriptedEffect.setParameter("Model", self.modelComboBox.currentText)

    def deactivate(self):
        self.dragStart = None

    # -- prompts in the slice views ------------------------------------------------------------------------
    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        tool = next(t for t, b in self.toolButtons.items() if b.checked)
        ras = self.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            self.lastView = viewWidget
            if tool == "box":
                self.dragStart = (ras, viewWidget)
            else:
                node = self.promptNode(tool)
                node.AddControlPointWorld(vtk.vtkVector3d(*ras))
                self.run(slice_only=True)
            return True
        if eventId == vtk.vtkCommand.MouseMoveEvent and self.dragStart is not None:
            self.placeBox(self.dragStart[0], ras, viewWidget)
            return True
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent and self.dragStart is not None:
            start, self.dragStart = self.dragStart[0], None
            self.placeBox(start, ras, viewWidget)
            self.run(slice_only=True)
            return True
        return False

    def promptNode(self, tool):
        node = self.nodes.get(tool)
        if node is not None and node.GetScene() is not None:
            return node
        className = "vtkMRMLMarkupsROINode" if tool in ("box", "box3d") else "vtkMRMLMarkupsFiducialNode"
        node = slicer.mrmlScene.AddNewNodeByClass(className, f"FastMedSAM effect {tool}")
        node.CreateDefaultDisplayNodes()
        node.SetHideFromEditors(tool == "box3d")
        if tool in ("include", "exclude"):
            set_role(node, INCLUDE if tool == "include" else EXCLUDE)
        if tool == "box3d":
            node.GetDisplayNode().SetVisibility(False)
        self.nodes[tool] = node
        return node

    def placeBox(self, cornerA, cornerB, viewWidget, depth=0.0):
        """A box in the slice plane of `viewWidget` spanning the two RAS corners."""
        sliceToRas = viewWidget.sliceLogic().GetSliceNode().GetSliceToRAS()
        axes = np.array([[sliceToRas.GetElement(r, c) for c in range(3)] for r in range(3)])
        axes = axes / np.linalg.norm(axes, axis=0)
        diagonal = np.asarray(cornerB) - np.asarray(cornerA)
        objectToWorld = np.eye(4)
        objectToWorld[:3, :3] = axes
        objectToWorld[:3, 3] = (np.asarray(cornerA) + np.asarray(cornerB)) / 2.0
        roi = self.promptNode("box")
        roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(objectToWorld))
        roi.SetSize(abs(diagonal @ axes[:, 0]), abs(diagonal @ axes[:, 1]), depth)

    def clearPrompts(self):
        for node in self.nodes.values():
            if node.GetScene() is not None:
                node.RemoveAllControlPoints()

    # -- prediction ----------------------------------------------------------------------------------------
    def run(self, slice_only):
        with self.reportingErrors():
            parameterSet = self.scriptedEffect.parameterSetNode()
            segmentation = parameterSet.GetSegmentationNode()
            segmentId = parameterSet.GetSelectedSegmentID()
            getSource = getattr(parameterSet, "GetSourceVolumeNode", None) or parameterSet.GetMasterVolumeNode
            volume = getSource()
            if volume is None or not segmentId:
                raise PromptError("select a source volume and a segment first")
            model = self.modelComboBox.currentText
            if not self.ensureReady(model):
                return
            # the module panel's Logic and prediction channel: one model loaded, one request in flight
            self.logic = shared.shared_logic(slicer.mrmlScene)
            self.worker = shared.shared_worker(slicer.mrmlScene)
            pause = Parameters.get_or_create(slicer.mrmlScene).pause  # the module panel's speed <-> accuracy knob
            roi = self.nodes.get("box")
            hasBox = roi is not None and roi.GetScene() is not None and roi.GetNumberOfControlPoints() > 0
            if self.lastView is None:
                raise PromptError("click a point or drag a box in a slice view first")
            sliceToRAS = self.lastView.sliceLogic().GetSliceNode().GetSliceToRAS()  # the view prompted in
            if slice_only:
                prompts = [n for t, n in self.nodes.items() if t != "box3d" and n.GetScene() is not None]
                request = self.logic.prepare_slice(volume, prompts, segmentation, segmentId, None, model, "auto",
                                                   pause, slice_to_ras=sliceToRAS)
            else:
                if not hasBox:
                    raise PromptError("drag a box on the middle slice first")
                request = self.logic.prepare_box(volume, self.extendedBox(volume, roi, sliceToRAS), segmentation,
                                                 segmentId, model, "auto", pause, slice_to_ras=sliceToRAS)
            self.worker.submit(request, owner=OWNER)
            if not self.timer.isActive():
                qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
                self.timer.start()

    def extendedBox(self, volume, roi, sliceToRAS):
        """The drawn 2D box thickened to the chosen number of planes on each side of the view it was drawn in."""
        box3d = self.promptNode("box3d")
        matrix = vtk.vtkMatrix4x4()
        matrix.DeepCopy(roi.GetObjectToNodeMatrix())
        box3d.SetAndObserveObjectToNodeMatrix(matrix)
        width, height, _ = roi.GetSize()
        planes = 2 * self.sliceRangeSpinBox.value + 1
        box3d.SetSize(width, height, planes * self.logic.plane_step(volume, sliceToRAS))
        return box3d

    def poll(self):
        for outcome in self.worker.poll(OWNER):
            if outcome.error is not None:
                self.showError(outcome.error)
                continue
            with self.reportingErrors():
                self.write(outcome.request, outcome.result)
        if not self.worker.busy:
            self.timer.stop()
            qt.QApplication.restoreOverrideCursor()

    def write(self, request, outcome):
        """Replace the prediction's region of the segment the request was made for, through the editor, on its
        own modifier geometry (undo, editable area and intensity range, overlap rules as for built-in effects)."""
        start = time.perf_counter()
        volume = slicer.mrmlScene.GetNodeByID(request.volume_id)
        segmentation = slicer.mrmlScene.GetNodeByID(request.segmentation_id)
        if volume is None or segmentation is None or segmentation.GetSegmentation().GetSegment(request.segment_id) is None:
            raise FastMedSAMError("the volume, segmentation or segment of this prompt was removed meanwhile")
        region, mask, covered = self.logic.prediction_region(request, outcome)
        geometry = self.scriptedEffect.defaultModifierLabelmap()
        self.scriptedEffect.saveStateForUndo()
        modes = slicer.qSlicerSegmentEditorAbstractEffect
        self.scriptedEffect.modifySegmentByLabelmap(
            segmentation, request.segment_id,
            segment_io.region_on_geometry(volume, segmentation, region, covered, geometry), modes.ModificationModeRemove)
        if mask.any():
            self.scriptedEffect.modifySegmentByLabelmap(
                segmentation, request.segment_id,
                segment_io.region_on_geometry(volume, segmentation, region, mask & covered, geometry),
                modes.ModificationModeAdd)
        result = self.logic.record(request, outcome, region, (time.perf_counter() - start) * 1000.0)
        self.latencyLabel.text = result.overlay_text

    def ensureReady(self, model):
        missing = dependencies.missing_requirements()
        if missing:
            raise FastMedSAMError(
                f"missing Python packages ({', '.join(r.package for r in missing)}): install them from the FastMedSAM module")
        info = model_info(get_spec(model))
        if not info.downloaded:
            raise FastMedSAMError(f"the {model} weights are not downloaded: use Download in the FastMedSAM module")
        return True

    @contextlib.contextmanager
    def reportingErrors(self):
        try:
            yield
        except (FastMedSAMError, ValueError, RuntimeError) as error:
            self.showError(error)

    def showError(self, error):
        if isinstance(error, PromptError):
            self.latencyLabel.text = f"<span style='color:#c0392b'>{error}</span>"
            return
        logging.error("FastMedSAM effect: %s", error, exc_info=error)
        slicer.util.errorDisplay(f"FastMedSAM: {error}")
