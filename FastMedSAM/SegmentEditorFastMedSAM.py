"""Hidden module that registers the "FastMedSAM" Segment Editor effect at start-up."""
import os

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest


class SegmentEditorFastMedSAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegmentEditorFastMedSAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["FastMedSAM contributors"]
        self.parent.hidden = True
        self.parent.helpText = "Registers the FastMedSAM effect of the Segment Editor."
        self.parent.acknowledgementText = ""
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        instance = effects.qSlicerSegmentEditorScriptedEffect(None)
        source = os.path.join(os.path.dirname(__file__), "SegmentEditorFastMedSAMLib", "SegmentEditorEffect.py")
        instance.setPythonSource(source.replace("\\", "/"))
        instance.self().register()


class SegmentEditorFastMedSAMTest(ScriptedLoadableModuleTest):
    """`ScriptedLoadableModule` registers a self-test for every module, hidden ones included; this one checks that
    the effect is registered and can be selected in a Segment Editor."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_effect_registered()

    def test_effect_registered(self):
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editor = slicer.qMRMLSegmentEditorWidget()
        editor.setMRMLScene(slicer.mrmlScene)
        editor.setMRMLSegmentEditorNode(editorNode)
        try:
            self.assertIsNotNone(editor.effectByName("FastMedSAM"), "the FastMedSAM effect is not registered")
            self.delayDisplay("SegmentEditorFastMedSAM self-test passed")
        finally:
            editor.setMRMLSegmentEditorNode(None)
            slicer.mrmlScene.RemoveNode(editorNode)
