"""FastMedSAM: interactive segmentation with efficient Segment-Anything models in 3D Slicer.

The widget is thin: everything that reads or writes MRML lives in `FastMedSAMLogicLib` (no Qt, tested headless),
predictions run in a backend process (the local `fastmedsam serve` child of `FastMedSAMLogicLib.backend_process`,
or a team's server) reached through one thread that only does socket I/O (`FastMedSAMLogicLib.shared`), and the
panel state per model comes
from `FastMedSAMLogicLib.panel`.
"""
import contextlib
import logging
import time

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from FastMedSAMLogicLib.libpath import ensure_engine_importable, resource_path

ensure_engine_importable()

from FastMedSAMLib.errors import FastMedSAMError, PromptError  # noqa: E402
from FastMedSAMLib.weights.registry import get_spec, list_specs  # noqa: E402
from FastMedSAMLogicLib import dependencies, panel, shared  # noqa: E402
from FastMedSAMLogicLib.logic import FastMedSAMLogic  # noqa: E402,F401  (the module's Logic, scriptable)
from FastMedSAMLogicLib.model_catalog import model_info, takes_mask  # noqa: E402
from FastMedSAMLogicLib.overlay import format_history_row  # noqa: E402
from FastMedSAMLogicLib.prompt_nodes import EXCLUDE, INCLUDE, set_role  # noqa: E402
from FastMedSAMLogicLib.view_overlay import SliceViewOverlay  # noqa: E402
from FastMedSAMLogicLib.worker import PredictionWorker  # noqa: E402

POLL_MS = 50
PREFETCH_DELAY_MS = 400  # after the last slice change
OWNER = "module-panel"  # its name on the prediction channel shared with the Segment Editor effect
PROGRESS_DELAY_S = 0.6  # the progress indicator appears only for predictions slower than this
PROMPT_NODES = {  # tool -> (parameter role, node class, name, colour)
    "include_point": ("IncludePoints", "vtkMRMLMarkupsFiducialNode", "FastMedSAM include", (0.2, 0.9, 0.2)),
    "exclude_point": ("ExcludePoints", "vtkMRMLMarkupsFiducialNode", "FastMedSAM exclude", (0.95, 0.2, 0.2)),
    "box_2d": ("Box2D", "vtkMRMLMarkupsROINode", "FastMedSAM 2D box", (1.0, 0.8, 0.1)),
    "roi_3d": ("ROI", "vtkMRMLMarkupsROINode", "FastMedSAM 3D box", (0.2, 0.6, 1.0)),
}


def _installTorchWithExtension():
    """torch through the PyTorch extension, which picks the build matching the GPU and driver."""
    import PyTorchUtils

    return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is not None


class FastMedSAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "FastMedSAM"
        self.parent.icon = qt.QIcon(str(resource_path("Icons/FastMedSAM.png")))
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "Markups"]
        self.parent.contributors = ["FastMedSAM contributors"]
        self.parent.helpText = (
            "Interactive segmentation with efficient Segment-Anything models (LiteMedSAM, MedficientSAM, "
            "FastSAM3D, SAM-Med3D-turbo). Place a box or points; the mask appears in the chosen segment and the "
            "slice views show how long the model took. Shortcuts while the module is shown: "
            + ", ".join(f"{key} {action}" for key, (_, action) in panel.SHORTCUTS.items())
            + "."
        )
        self.parent.acknowledgementText = (
            "Model weights by their authors (see each model's licence in the panel): LiteMedSAM (bowang-lab), "
            "MedficientSAM, FastSAM3D, SAM-Med3D."
        )


class FastMedSAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._worker = None
        self._downloader = None
        self._shortcuts = []
        self._busySince = None
        self._waitCursor = False
        self._progressBar = None  # one status-bar indicator, reused; it never takes the focus
        self._overlay = SliceViewOverlay()
        self._lastView = "Red"  # the slice view the pointer was last in
        self._prefetchView = "Red"  # the slice view scrolled last
        self._updating = False

    # -- set-up --------------------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resource_path("UI/FastMedSAM.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.inputVolumeSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.segmentSelector.setMRMLScene(slicer.mrmlScene)
        self.logic = shared.shared_logic(slicer.mrmlScene)  # the Segment Editor effect uses the same one

        for spec in list_specs():
            if spec.role == "model":
                self.ui.modelComboBox.addItem(spec.name)
        self.ui.downloadProgressBar.setVisible(False)
        self.ui.timingTable.setRowCount(0)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.backendComboBox.connect("currentIndexChanged(int)", self.onBackendChanged)
        self.ui.serverUrlLineEdit.connect("editingFinished()", self.onBackendChanged)
        self.ui.serverTokenLineEdit.connect("editingFinished()", self.onBackendChanged)
        self.onBackendChanged()
        self.ui.pauseSlider.connect("valueChanged(int)", self.onPauseChanged)
        self.ui.showOverlayCheckBox.connect("toggled(bool)", self.onShowOverlayToggled)
        self.ui.autoRunCheckBox.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        self.ui.downloadButton.connect("clicked()", self.onDownload)
        self.ui.installDependenciesButton.connect("clicked()", self.onInstallDependencies)
        for tool, buttonName in panel.TOOL_BUTTONS.items():
            getattr(self.ui, buttonName).connect("toggled(bool)", lambda checked, t=tool: self.onToolToggled(t, checked))
        self.ui.segmentSliceButton.connect("clicked()", self.onSegmentSlice)
        self.ui.propagateButton.connect("clicked()", self.onPropagate)
        self.ui.acceptButton.connect("clicked()", self.onAccept)
        self.ui.undoButton.connect("clicked()", self.onUndo)
        self.ui.clearButton.connect("clicked()", self.onClear)

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self._poll)
        self._prefetchTimer = qt.QTimer()  # scrolling settles before the viewed slices are prefetched
        self._prefetchTimer.setSingleShot(True)
        self._prefetchTimer.setInterval(PREFETCH_DELAY_MS)
        self._prefetchTimer.connect("timeout()", self._prefetchViewed)
        self._createShortcuts()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        self.addObserver(interactionNode, interactionNode.InteractionModeChangedEvent, self.onInteractionModeChanged)
        self.initializeParameterNode()

    def _createShortcuts(self):
        mainWindow = slicer.util.mainWindow()
        if mainWindow is None:  # --no-main-window (e.g. the generic widget test): no window to bind keys to
            return
        for key, (widgetName, _) in panel.SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), mainWindow)
            shortcut.setEnabled(False)
            shortcut.connect("activated()", getattr(self.ui, widgetName).click)
            self._shortcuts.append(shortcut)
        escape = qt.QShortcut(qt.QKeySequence("Escape"), mainWindow)
        escape.setEnabled(False)
        escape.connect("activated()", self._stopPlacement)
        self._shortcuts.append(escape)

    def enter(self):
        self.initializeParameterNode()
        for shortcut in self._shortcuts:
            shortcut.setEnabled(True)
        for sliceNode in self._sliceNodes().values():  # prefetch follows the slice being viewed
            self.addObserver(sliceNode, vtk.vtkCommand.ModifiedEvent, self.onSliceViewChanged)

    def exit(self):
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
        self._stopPlacement()
        for sliceNode in self._sliceNodes().values():
            self.removeObserver(sliceNode, vtk.vtkCommand.ModifiedEvent, self.onSliceViewChanged)
        self._prefetchTimer.stop()

    def onInputVolumeChanged(self, node):
        self.updateParameterNodeFromGUI()
        self._prefetchTimer.start()  # a volume was set: encode around the slice the last-scrolled view shows

    def onSliceViewChanged(self, sliceNode, event):
        self._prefetchView = sliceNode.GetLayoutName()
        self._prefetchTimer.start()  # restarts: one prefetch once the scrolling stops

    def _prefetchViewed(self):
        """Encode, on the backend and in the background, the slices around the one the scrolled view shows (that
        one first), so the next prompt there skips the encoder. Silent and best effort: never a dialog, never
        ahead of a prompt (the channel's background lane), nothing when the model or weights are not ready."""
        model, device = self.ui.modelComboBox.currentText, self.ui.deviceComboBox.currentText
        volume = self.ui.inputVolumeSelector.currentNode()
        if not model or volume is None or dependencies.missing_requirements() or not model_info(get_spec(model)).downloaded:
            return
        try:
            request = self.logic.prepare_prefetch(volume, model, device, self.logic.parameters.pause,
                                                  slice_to_ras=self._sliceToRAS(self._prefetchView))
        except FastMedSAMError:
            return  # e.g. a volume without image data: the prompt will say so
        if request is not None:
            shared.shared_worker(slicer.mrmlScene).submit_background(request)

    def cleanup(self):
        self.removeObservers()
        self._timer.stop()
        shared.close()
        if self._downloader is not None:
            self._downloader.close()
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self._shortcuts = []
        if self.logic is not None:
            self.logic.cleanup()
        self._overlay.remove()
        if self._progressBar is not None:
            self._progressBar.setParent(None)
            self._progressBar = None

    def onSceneStartClose(self, caller, event):
        self.logic.reset()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event):
        self.initializeParameterNode()

    # -- parameter node <-> GUI ----------------------------------------------------------------------------
    def initializeParameterNode(self):
        parameters = self.logic.parameters
        if parameters.reference("InputVolume") is None:
            volume = self.logic.default_input_volume(slicer.mrmlScene)
            if volume is not None:
                parameters.set_reference("InputVolume", volume)
        self.updateGUIFromParameterNode()
        self._watchPrompts()

    def updateGUIFromParameterNode(self):
        parameters = self.logic.parameters
        self._updating = True
        try:
            self.ui.inputVolumeSelector.setCurrentNode(parameters.reference("InputVolume"))
            self.ui.segmentSelector.setCurrentNode(parameters.reference("Segmentation"))
            if parameters.segment_id:
                self.ui.segmentSelector.setCurrentSegmentID(parameters.segment_id)
            index = self.ui.modelComboBox.findText(parameters.model)
            self.ui.modelComboBox.setCurrentIndex(max(index, 0))
            self.ui.deviceComboBox.setCurrentIndex(max(self.ui.deviceComboBox.findText(parameters.device), 0))
            self.ui.pauseSlider.value = panel.slider_value(parameters.pause)
            self.ui.showOverlayCheckBox.setChecked(parameters.flag("ShowOverlay"))
            self.ui.autoRunCheckBox.setChecked(parameters.flag("AutoRun"))
        finally:
            self._updating = False
        self._updateModelControls()

    def updateParameterNodeFromGUI(self, *unused):
        if self._updating:
            return
        parameters = self.logic.parameters
        parameters.set_reference("InputVolume", self.ui.inputVolumeSelector.currentNode())
        parameters.set_reference("Segmentation", self.ui.segmentSelector.currentNode())
        parameters.set("SegmentID", self.ui.segmentSelector.currentSegmentID() or "")
        parameters.set("Model", self.ui.modelComboBox.currentText)
        parameters.set("Device", self.ui.deviceComboBox.currentText)
        parameters.set_pause(panel.pause_from_slider(self.ui.pauseSlider.value))
        parameters.set_flag("ShowOverlay", self.ui.showOverlayCheckBox.checked)
        parameters.set_flag("AutoRun", self.ui.autoRunCheckBox.checked)

    # -- model, device, dependencies, weights --------------------------------------------------------------
    def onModelChanged(self, index):
        self.updateParameterNodeFromGUI()
        self.logic.release_sessions()
        self._stopPlacement()
        self._updateModelControls()

    def onDeviceChanged(self, index):
        self.updateParameterNodeFromGUI()
        self.logic.release_sessions()

    def onPauseChanged(self, value):
        """Only the knob changes: the warm Session (weights, cached embeddings) stays; the next prompt uses it."""
        self.updateParameterNodeFromGUI()
        model = self.ui.modelComboBox.currentText
        self.ui.pauseValueLabel.text = panel.pause_text(model, panel.pause_from_slider(value))

    def _updateModelControls(self):
        model = self.ui.modelComboBox.currentText
        if not model:
            return
        downloading = self._downloader is not None and self._downloader.busy
        view = panel.model_panel(model, model_info(get_spec(model)), downloading, self.logic.parameters.pause)
        for widgetName, properties in view.items():
            widget = getattr(self.ui, widgetName)
            for name, value in properties.items():
                setattr(widget, name, value)
            if properties.get("enabled") is False and getattr(widget, "checkable", False):
                widget.checked = False
        self.ui.installDependenciesButton.setVisible(bool(dependencies.missing_requirements()))

    def onInstallDependencies(self):
        self._installDependencies()
        self._updateModelControls()

    def _installDependencies(self):
        """Ask (normal cursor), then install the missing packages on this (main) thread under a wait cursor;
        keeps an installed torch. A failure shows one dialog and returns False (never raises out of a slot:
        `slicer.util.tryWithErrorDisplay` would re-raise)."""
        installTorch = _installTorchWithExtension if hasattr(slicer.modules, "pytorchutils") else None
        return dependencies.install_with_feedback(slicer.util.confirmOkCancelDisplay, slicer.util.pip_install,
                                                  slicer.util.errorDisplay, _waitCursor, installTorch)

    def onDownload(self):
        model = self.ui.modelComboBox.currentText
        if dependencies.missing_requirements() and not self._installDependencies():
            return
        if self._downloader is None:
            self._downloader = PredictionWorker(self._downloadWeights, name="FastMedSAM-download")
        self._downloader.submit(model)
        self.ui.downloadProgressBar.setVisible(True)
        self.ui.downloadProgressBar.setRange(0, 0)  # busy: the engine reports no byte counts to a GUI
        self.ui.downloadProgressBar.setFormat(f"Downloading {model}...")
        self.ui.downloadButton.enabled = False
        self._timer.start()

    @staticmethod
    def _downloadWeights(model):
        from FastMedSAMLib.weights.store import ensure_weights

        return ensure_weights(model, progress=False)

    def _ensureReady(self, model):
        """Dependencies installed and weights cached; asks (main thread) before installing or downloading."""
        if dependencies.missing_requirements() and not self._installDependencies():
            return False
        info = model_info(get_spec(model))
        if info.downloaded:
            return True
        if not info.downloadable:
            slicer.util.errorDisplay(f"The {model} weights are a manual download: {info.weights_text}.")
            return False
        size = f" ({info.size_bytes / 2**20:.0f} MB)" if info.size_bytes else ""
        if slicer.util.confirmOkCancelDisplay(f"The {model} weights{size} are not downloaded yet. Download them now?"):
            self.onDownload()
            self._setStatus(f"Downloading the {model} weights; prompt again when the download is done.")
        return False

    # -- prompts -------------------------------------------------------------------------------------------
    def _promptNode(self, tool, create=True):
        role, className, name, colour = PROMPT_NODES[tool]
        parameters = self.logic.parameters
        node = parameters.reference(role)
        if node is None and create:
            node = slicer.mrmlScene.AddNewNodeByClass(className, name)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*colour)
            if tool in ("include_point", "exclude_point"):
                set_role(node, INCLUDE if tool == "include_point" else EXCLUDE)
            parameters.set_reference(role, node)
            self._watchPrompts()
        return node

    def _watchPrompts(self):
        nodes = [self._promptNode(tool, create=False) for tool in PROMPT_NODES]
        self.logic.watch_prompt_nodes([n for n in nodes if n is not None], self.onPromptPlaced)

    def onToolToggled(self, tool, checked):
        if self._updating:
            return
        if not checked:
            self._stopPlacement()
            return
        self._updating = True
        for other, buttonName in panel.TOOL_BUTTONS.items():
            if other != tool:
                getattr(self.ui, buttonName).checked = False
        self._updating = False
        node = self._promptNode(tool)
        if tool in ("box_2d", "roi_3d"):
            node.RemoveAllControlPoints()
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selectionNode.SetActivePlaceNodeID(node.GetID())
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetPlaceModePersistence(1 if tool in ("include_point", "exclude_point") else 0)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)

    def _stopPlacement(self):
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        if interactionNode.GetCurrentInteractionMode() == interactionNode.Place:
            interactionNode.SetCurrentInteractionMode(interactionNode.ViewTransform)
        self.onInteractionModeChanged()

    def onInteractionModeChanged(self, *unused):
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        if interactionNode.GetCurrentInteractionMode() == interactionNode.Place:
            return
        self._updating = True
        for buttonName in panel.TOOL_BUTTONS.values():
            getattr(self.ui, buttonName).checked = False
        self._updating = False

    def onPromptPlaced(self, node):
        """A prompt is complete (the Logic calls this once per point, once per finished box)."""
        if not self.ui.autoRunCheckBox.checked:
            return
        view = self._viewOf(node)
        roi = self._promptNode("roi_3d", create=False)
        if node is roi:
            self.onPropagate(view)
        elif takes_mask(self.ui.modelComboBox.currentText) and roi is not None and roi.GetNumberOfControlPoints():
            self.onPropagate(self._viewOf(roi))  # a click on a 3D object: it corrects it and re-propagates
        elif get_spec(self.ui.modelComboBox.currentText).dimensionality == "3D":
            self.onPropagate()
        else:
            self.onSegmentSlice(view)

    # -- slice views ---------------------------------------------------------------------------------------
    def _sliceNodes(self):
        """{view name: slice node} of the layout's slice views."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return {}
        return {name: layoutManager.sliceWidget(name).mrmlSliceNode() for name in layoutManager.sliceViewNames()}

    def _pointerView(self):
        """The slice view the pointer is in, else the last one it was in."""
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:
            sliceNode = crosshair.GetCursorPositionXYZ([0.0, 0.0, 0.0])
            if sliceNode is not None and sliceNode.GetLayoutName() in self._sliceNodes():
                self._lastView = sliceNode.GetLayoutName()
        return self._lastView

    def _viewOf(self, node):
        """The view a prompt node was drawn in (whose plane holds it); the pointer's view otherwise."""
        views = [(name, sliceNode.GetSliceToRAS()) for name, sliceNode in self._sliceNodes().items()]
        return self.logic.view_of_prompt(node, views, self._pointerView())

    def _sliceToRAS(self, view):
        sliceNode = self._sliceNodes().get(view)
        return None if sliceNode is None else sliceNode.GetSliceToRAS()

    def _output(self):
        """(volume, segmentation, segment id); creates the segmentation / segment when none is chosen."""
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is None:
            raise PromptError("choose an input volume first")
        segmentation = self.ui.segmentSelector.currentNode()
        if segmentation is None:
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} FastMedSAM")
            segmentation.CreateDefaultDisplayNodes()
            self.ui.segmentSelector.setCurrentNode(segmentation)
        segmentId = self.ui.segmentSelector.currentSegmentID() or self.logic.ensure_segment(segmentation)
        self.ui.segmentSelector.setCurrentSegmentID(segmentId)
        self.logic.attach_segmentation(volume, segmentation)
        return volume, segmentation, segmentId

    def onSegmentSlice(self, view=None):
        """Segment the plane of `view` (the 2D box's view, else the view under the pointer) with the prompts on it."""
        model, device = self.ui.modelComboBox.currentText, self.ui.deviceComboBox.currentText
        with self._reportingErrors():
            volume, segmentation, segmentId = self._output()
            box = self._promptNode("box_2d", create=False)
            if view is None:
                view = self._viewOf(box) if box is not None and box.GetNumberOfControlPoints() else self._pointerView()
            nodes = [self._promptNode(t, create=False) for t in ("include_point", "exclude_point", "box_2d")]
            request = self.logic.prepare_slice(volume, [n for n in nodes if n is not None], segmentation, segmentId,
                                               None, model, device, self.logic.parameters.pause,
                                               slice_to_ras=self._sliceToRAS(view))
            self._submit(request)

    def onPropagate(self, view=None):
        """3D: the ROI propagated along the normal of the view it was drawn in (3D models: the points)."""
        model, device = self.ui.modelComboBox.currentText, self.ui.deviceComboBox.currentText
        with self._reportingErrors():
            volume, segmentation, segmentId = self._output()
            if get_spec(model).dimensionality == "3D":
                nodes = [self._promptNode(t, create=False) for t in ("include_point", "exclude_point")]
                request = self.logic.prepare_points(volume, [n for n in nodes if n is not None], segmentation,
                                                    segmentId, model, device, self.logic.parameters.pause)
            else:
                roi = self._promptNode("roi_3d", create=False)
                if roi is None or roi.GetNumberOfControlPoints() == 0:
                    raise PromptError("draw a 3D box first (3)")
                view = view or self._viewOf(roi)
                clicks = [self._promptNode(t, create=False) for t in ("include_point", "exclude_point")] if takes_mask(model) else []
                request = self.logic.prepare_box(volume, roi, segmentation, segmentId, model, device,
                                                 self.logic.parameters.pause, slice_to_ras=self._sliceToRAS(view),
                                                 point_nodes=[n for n in clicks if n is not None])
            self._submit(request)

    def onAccept(self):
        self.logic.accept()
        self._clearPrompts()
        self._setStatus("Accepted. The next prompt starts a new object.")

    def onUndo(self):
        with self._reportingErrors():
            self._setStatus("Undone." if self.logic.undo() else "Nothing to undo.")

    def onClear(self):
        with self._reportingErrors():
            count = self.logic.clear()
            self._clearPrompts()
            self._setStatus(f"Cleared {count} pending result(s).")

    def _clearPrompts(self):
        for tool in PROMPT_NODES:
            node = self._promptNode(tool, create=False)
            if node is not None:
                node.RemoveAllControlPoints()

    # -- the worker ----------------------------------------------------------------------------------------
    def onBackendChanged(self, *_):
        """Local (automatic) or a named server; the token is never saved with the scene."""
        server = self.ui.backendComboBox.currentIndex == 1
        for widget in (self.ui.serverUrlLineEdit, self.ui.serverTokenLineEdit):
            widget.enabled = server
        shared.choose_backend(shared.SERVER if server else shared.LOCAL, self.ui.serverUrlLineEdit.text,
                              self.ui.serverTokenLineEdit.text)
        self.ui.backendStatusLabel.text = "not connected yet"

    def _submit(self, request):
        if not self._ensureReady(request.model):
            return
        self._worker = shared.shared_worker(slicer.mrmlScene)
        self._worker.submit(request, owner=OWNER)
        if self._busySince is None:
            self._busySince = time.monotonic()
        if not self._waitCursor:
            qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
            self._waitCursor = True
        self._timer.start()

    def _poll(self):
        if self._worker is not None:
            for outcome in self._worker.poll(OWNER):
                self.ui.backendStatusLabel.text = shared.connection_state(outcome.error)
                if outcome.error is not None:
                    self._showError(outcome.error)
                    continue
                with self._reportingErrors():
                    self._showResult(self.logic.apply(outcome.request, outcome.result))
            if self._worker.busy:
                if time.monotonic() - self._busySince > PROGRESS_DELAY_S:
                    self._showProgress(True, *shared.progress())
            else:
                self._idle()
        if self._downloader is not None:
            for outcome in self._downloader.poll():
                self.ui.downloadProgressBar.setRange(0, 1)
                self.ui.downloadProgressBar.setValue(1)
                if outcome.error is not None:
                    self.ui.downloadProgressBar.setFormat("Download failed")
                    self._showError(outcome.error)
                else:
                    self.ui.downloadProgressBar.setFormat(f"{outcome.request} weights ready")
                self._updateModelControls()
        busy = (self._worker is not None and self._worker.busy) or (self._downloader is not None and self._downloader.busy)
        if not busy:
            self._timer.stop()

    def _showProgress(self, shown, done=0, total=0):
        """One busy indicator in the main window's status bar, made once and reused: unlike a progress dialog it
        never becomes the active window, so the module's shortcuts keep working while it shows. `total` > 0: the
        slices done of a 3D propagation."""
        if self._progressBar is None:
            mainWindow = slicer.util.mainWindow()
            if mainWindow is None or not shown:
                return
            self._progressBar = qt.QProgressBar()
            self._progressBar.setRange(0, 0)
            self._progressBar.setFormat("FastMedSAM is segmenting...")
            self._progressBar.setTextVisible(True)
            self._progressBar.setMaximumWidth(220)
            self._progressBar.setFocusPolicy(qt.Qt.NoFocus)
            mainWindow.statusBar().addPermanentWidget(self._progressBar)
        if total:
            self._progressBar.setRange(0, total)
            self._progressBar.setValue(done)
            self._progressBar.setFormat("FastMedSAM: %v / %m slices")
        else:
            self._progressBar.setRange(0, 0)
            self._progressBar.setFormat("FastMedSAM is segmenting...")
        self._progressBar.setVisible(shown)

    def _idle(self):
        self._busySince = None
        self._showProgress(False)
        if self._waitCursor:
            qt.QApplication.restoreOverrideCursor()
            self._waitCursor = False

    def _showResult(self, result):
        self.ui.latencyLabel.text = result.overlay_text
        if self.ui.showOverlayCheckBox.checked:
            self._setOverlay(result.overlay_text)
        records = list(reversed(self.logic.history.records()))
        self.ui.timingTable.setRowCount(len(records))
        for row, record in enumerate(records):
            for column, text in enumerate(format_history_row(record)):
                self.ui.timingTable.setItem(row, column, qt.QTableWidgetItem(text))
        self.ui.timingTable.resizeColumnsToContents()
        note = f" {result.record.pause_note}." if result.record.pause_note else ""
        self._setStatus(f"Segment updated on slices {result.region.k0}..{result.region.k1}.{note}")

    def onShowOverlayToggled(self, checked):
        self.updateParameterNodeFromGUI()
        self._setOverlay(self.ui.latencyLabel.text if checked and len(self.logic.history) else "")

    def _setOverlay(self, text):
        """The latency text in every slice view, drawn by our own actor (DataProbe rewrites the corner annotation
        at every slice change); empty text hides it and leaves DataProbe's annotation alone."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        for name in layoutManager.sliceViewNames():
            view = layoutManager.sliceWidget(name).sliceView()
            self._overlay.show(name, view.renderWindow().GetRenderers().GetFirstRenderer(), text)
            view.scheduleRender()

    # -- messages ------------------------------------------------------------------------------------------
    def _setStatus(self, text, error=False):
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet("color: #c0392b" if error else "")

    def _showError(self, error):
        if isinstance(error, PromptError):
            self._setStatus(str(error), error=True)
        else:
            logging.error("FastMedSAM: %s", error, exc_info=error)
            self._setStatus(str(error), error=True)
            slicer.util.errorDisplay(f"FastMedSAM: {error}")

    @contextlib.contextmanager
    def _reportingErrors(self):
        try:
            yield
        except (FastMedSAMError, ValueError, RuntimeError) as error:
            self._showError(error)


@contextlib.contextmanager
def _waitCursor():
    qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        yield
    finally:
        qt.QApplication.restoreOverrideCursor()


class FastMedSAMTest(ScriptedLoadableModuleTest):
    """Runs the same test bodies as the CI (`Testing/Python/test_slicer_logic.py`), here on Slicer's own scene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_FastMedSAM_logic()
        self.setUp()
        self.test_FastMedSAM_gui()

    def test_FastMedSAM_gui(self):
        """The widget end to end: boxes in the Yellow and Green views, segment, Dice, undo, overlay after a scroll."""
        from FastMedSAMSelfTest import gui, scenario

        dataDir = scenario.find_data_dir()
        if dataDir is None or dependencies.missing_requirements():
            self.delayDisplay("FastMedSAM GUI self-test skipped: test data or dependencies missing")
            return
        from FastMedSAMLib.weights.store import ensure_weights

        ensure_weights("litemedsam", progress=False)
        self.delayDisplay(f"FastMedSAM GUI test passed: Dice {gui.run_gui_test(self, dataDir)}")

    def test_FastMedSAM_logic(self):
        from FastMedSAMSelfTest import bodies, scenario

        dataDir = scenario.find_data_dir()
        if dataDir is None:
            self.delayDisplay("FastMedSAM self-test skipped: test data not found (set FASTMEDSAM_SHARED)")
            return
        missing = dependencies.missing_requirements()
        if missing:
            self.delayDisplay(f"FastMedSAM self-test skipped: install {', '.join(r.package for r in missing)} first")
            return
        from FastMedSAMLib.weights.store import ensure_weights

        ensure_weights(bodies.MODEL, progress=False)
        volumesLogic = slicer.modules.volumes.logic()
        lesion = scenario.load_lesion_scene(slicer.mrmlScene, volumesLogic, dataDir)
        logic = FastMedSAMLogic(slicer.mrmlScene)
        context = bodies.SelfTestContext(slicer.mrmlScene, volumesLogic, slicer.modules.segmentations.logic(), lesion,
                                         logic, bodies.temporary_directory())
        try:
            for name, body in bodies.BODIES:
                self.delayDisplay(f"FastMedSAM: {name}")
                figures = body(context)
                self.delayDisplay(f"{name} passed: {figures}")
        finally:
            logic.cleanup()
        self.delayDisplay("FastMedSAM self-test passed")
