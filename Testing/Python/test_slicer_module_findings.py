"""Review findings on the module's Slicer layer (../shared/docs/slicer-review.md) checked without the app: the
latency overlay against an emulation of DataProbe, dependency-install errors, shortcut keys, the effect's writes on
the editor's modifier geometry."""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import List

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

import vtk  # noqa: E402
from slicer_headless import start_headless_slicer  # noqa: E402

from FastMedSAMLogicLib import dependencies, panel  # noqa: E402
from FastMedSAMLogicLib.view_overlay import SliceViewOverlay  # noqa: E402


def emulated_data_probe(corner: vtk.vtkCornerAnnotation, step: int) -> None:
    """What DataProbe's `drawCornerAnnotations` does on every slice-logic change: SetText on all four corners
    (Modules/Scripted/DataProbe/DataProbeLib/SliceViewAnnotations.py); index 3 gets "" by default."""
    for position in range(4):
        corner.SetText(position, f"B: CT lesion\nslice {step}" if position in (0, 2) else "")


def _text_actors(renderer: vtk.vtkRenderer) -> list:
    props = renderer.GetViewProps()
    return [props.GetItemAsObject(i) for i in range(props.GetNumberOfItems())
            if props.GetItemAsObject(i).IsA("vtkTextActor")]


def test_overlay_survives_data_probe_and_never_blanks_it() -> None:
    renderers = {name: vtk.vtkRenderer() for name in ("Red", "Yellow", "Green")}
    corners = {}
    for name, renderer in renderers.items():
        corners[name] = vtk.vtkCornerAnnotation()
        renderer.AddViewProp(corners[name])
        emulated_data_probe(corners[name], 0)
    overlay = SliceViewOverlay()
    text = "FastMedSAM litemedsam (cpu)\nencode 812 ms | decode 9.1 ms | total 840 ms\nlogic 31 ms"
    for name, renderer in renderers.items():
        overlay.show(name, renderer, text)
    for step in range(1, 4):  # scrolling / zooming / window-level: DataProbe rewrites every corner each time
        for name in renderers:
            emulated_data_probe(corners[name], step)
    for name, renderer in renderers.items():
        assert overlay.text(name) == text, f"{name}: the overlay was erased by DataProbe's rewrite"
        assert [a.GetInput() for a in _text_actors(renderer)] == [text]
        assert corners[name].GetText(3) == "", "the overlay must not write into DataProbe's corner annotation"
    probe_text = {name: [corners[name].GetText(i) for i in range(4)] for name in renderers}
    overlay.hide()  # "show latency" unchecked
    for name in renderers:
        assert overlay.text(name) == ""
        assert [corners[name].GetText(i) for i in range(4)] == probe_text[name], "hiding blanked DataProbe's text"
    overlay.show("Red", renderers["Red"], text)  # one actor per view, reused
    assert len(_text_actors(renderers["Red"])) == 1 and overlay.text("Red") == text
    moved = vtk.vtkRenderer()  # a layout change gives the view a new renderer: the actor moves over
    overlay.show("Red", moved, text)
    assert len(_text_actors(renderers["Red"])) == 0 and len(_text_actors(moved)) == 1
    overlay.remove()
    assert all(len(_text_actors(r)) == 0 for r in (moved, *renderers.values()))
    assert all(r.GetViewProps().IsItemPresent(corners[n]) for n, r in renderers.items()), "DataProbe's prop removed"


def _missing_scipy(name: str):
    return None if name == "scipy" else object()


def test_dependency_install_failure_shows_one_dialog_and_raises_nothing() -> None:
    events: List[str] = []

    @contextmanager
    def busy():
        events.append("busy on")
        yield
        events.append("busy off")

    def confirm(text: str) -> bool:
        assert "busy on" not in events or events[-1] == "busy off", "confirmation shown under the wait cursor"
        events.append("asked")
        return True

    def failing_pip(packages) -> None:
        raise subprocess.CalledProcessError(1, ["pip", "install", *packages])

    shown: List[str] = []
    ok = dependencies.install_with_feedback(confirm, failing_pip, shown.append, busy, find_spec=_missing_scipy)
    assert ok is False and len(shown) == 1 and "scipy" in shown[0] and "failed" in shown[0], shown
    assert events == ["asked", "busy on"], events  # the failure left the busy block through the exception

    declined: List[str] = []
    assert dependencies.install_with_feedback(lambda _t: False, failing_pip, declined.append, busy,
                                              find_spec=_missing_scipy) is False
    assert declined == [], "declining is not an error"
    assert dependencies.install_with_feedback(confirm, failing_pip, shown.append, busy,
                                              find_spec=lambda _n: object()) is True  # nothing missing: no question


def test_shortcuts_leave_the_slice_view_keys_alone() -> None:
    taken = {key for key in panel.SHORTCUTS if key in panel.VIEW_KEYS or key.lower() in panel.VIEW_KEYS}
    assert not taken, f"shortcuts on keys Slicer's views use: {sorted(taken)}"
    assert {"b", "r", "s"} <= set(panel.VIEW_KEYS)
    assert len(panel.SHORTCUTS) == len({key.lower() for key in panel.SHORTCUTS})


def test_module_widget_creates_no_parentless_shortcut() -> None:
    source = (Path(__file__).resolve().parents[2] / "FastMedSAM" / "FastMedSAM.py").read_text(encoding="utf-8")
    body = source[source.index("def _createShortcuts"):source.index("def enter")]
    guard, creation = body.index("if mainWindow is None"), body.index("qt.QShortcut(")
    assert guard < creation, "QShortcut must not be created with a None parent (--no-main-window)"
    assert "createProgressDialog" not in source, "one reusable status-bar indicator, no per-prediction dialog"
    assert "cornerAnnotation" not in source, "DataProbe owns the corner annotation"
    assert "tryWithErrorDisplay(" not in source, "it re-raises out of the slot"


@pytest.fixture(scope="module")
def headless():
    slicer_app = start_headless_slicer()
    yield slicer_app
    slicer_app.close()


def test_effect_mask_lands_on_the_editor_geometry(headless) -> None:
    """The effect's modifier is built on the editor's geometry (here: the segmentation oversampled 2x and shifted),
    and covers the same world voxels as the mask on the volume grid."""
    import slicer
    from slicer import util

    from FastMedSAMLogicLib.geometry import ijk_to_segmentation
    from FastMedSAMLogicLib.segment_io import Region, region_on_geometry

    scene = headless.scene
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "grid")
    volume.SetSpacing(0.8, 0.8, 2.5)
    volume.SetOrigin(10.0, -20.0, 5.0)
    image = vtk.vtkImageData()
    image.SetDimensions(40, 30, 12)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    volume.SetAndObserveImageData(image)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    region = Region(3, 6, 5, 20, 8, 30)
    ks, js, is_ = np.indices(region.shape)
    mask = ((js - 7) ** 2 + (is_ - 11) ** 2) < 40
    oversampled = np.diag([0.5, 0.5, 0.5, 1.0])
    oversampled[:3, 3] = (0.25, 0.0, -0.25)  # and shifted by a quarter voxel
    geometry = slicer.vtkOrientedImageData()
    geometry.SetImageToWorldMatrix(util.vtkMatrixFromArray(ijk_to_segmentation(volume, segmentation) @ oversampled))
    geometry.SetExtent(0, 79, 0, 59, 0, 23)
    out = region_on_geometry(volume, segmentation, region, mask, geometry)
    to_grid = vtk.vtkMatrix4x4()
    out.GetImageToWorldMatrix(to_grid)
    assert np.allclose(util.arrayFromVTKMatrix(to_grid), ijk_to_segmentation(volume, segmentation) @ oversampled)
    extent = out.GetExtent()
    full = geometry.GetExtent()
    assert all(extent[2 * a] >= full[2 * a] and extent[2 * a + 1] <= full[2 * a + 1] for a in range(3))
    from vtk.util import numpy_support

    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    voxels = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(shape) > 0
    assert 7.0 < voxels.sum() / mask.sum() < 9.0, voxels.sum() / mask.sum()  # 2x finer on each axis

    def centroid(ijk_to_frame, kji) -> np.ndarray:
        k, j, i = (np.nonzero(kji)[a].mean() for a in range(3))
        return (ijk_to_frame @ np.array([i, j, k, 1.0]))[:3]

    ours = centroid(ijk_to_segmentation(volume, segmentation), np.pad(mask, [(region.k0, 0), (region.j0, 0),
                                                                             (region.i0, 0)]))
    theirs_ijk = np.array([np.nonzero(voxels)[a].mean() for a in (2, 1, 0)]) + [extent[0], extent[2], extent[4]]
    theirs = (util.arrayFromVTKMatrix(to_grid) @ np.r_[theirs_ijk, 1.0])[:3]
    assert np.abs(ours - theirs).max() < 0.5, (ours, theirs)  # within half a fine voxel
    for node in (segmentation, volume):
        scene.RemoveNode(node)
