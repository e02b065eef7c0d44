"""A real MRML scene with the module logics FastMedSAM needs, without the Slicer application (slicer-core).

The returned object owns the module logics; keep it alive as long as the scene (they observe it, and a collected
logic makes the next markups node segfault).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, REPO / "FastMedSAM"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@dataclass
class HeadlessSlicer:
    scene: object
    app_logic: object
    logics: Dict[str, object] = field(default_factory=dict)

    @property
    def volumes_logic(self):
        return self.logics["Volumes"]

    @property
    def segmentations_logic(self):
        return self.logics["Segmentations"]

    def close(self) -> None:
        self.scene.Clear(1)


def start_headless_slicer() -> HeadlessSlicer:
    import slicer
    import vtk

    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetName("default")
    scene.AddNode(crosshair)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()
    app_logic.SetSliceLogics(vtk.vtkCollection())
    app_logic.SetViewLogics(vtk.vtkCollection())
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    app_logic.SetModuleLogic("Colors", color_logic)
    headless = HeadlessSlicer(scene, app_logic)
    for name, cls in (
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
        ("Markups", slicer.vtkSlicerMarkupsLogic),
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
    ):
        logic = cls()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        headless.logics[name] = logic
    return headless
