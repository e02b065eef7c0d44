"""The module panel and the extension layout, checked without Slicer.

The .ui is parsed, loaded with PySide6's QUiLoader on the offscreen platform and rendered to
Testing/Artifacts/FastMedSAM_panel.png. Slicer's own widgets (qMRMLWidget, qMRMLNodeComboBox,
qMRMLSegmentSelectorWidget) do not exist outside Slicer: plain Qt stand-ins of the same class names take their
place, so the layout, every other widget and every name the module code uses are the real ones.
"""
from __future__ import annotations

import ast
import functools
import json
import os
import py_compile
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Set

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from slicer_headless import REPO  # noqa: E402  (also puts FastMedSAM/ on sys.path)

from FastMedSAMLib.pause import supports_pause  # noqa: E402
from FastMedSAMLib.weights.registry import get_spec, list_specs  # noqa: E402
from FastMedSAMLogicLib import panel  # noqa: E402
from FastMedSAMLogicLib.model_catalog import PAUSE_TOOLTIP, model_info, pause_state  # noqa: E402
from FastMedSAMLogicLib.overlay import HISTORY_COLUMNS, TimingRecord, format_history_row, format_overlay  # noqa: E402

UI_FILE = REPO / "Resources" / "UI" / "FastMedSAM.ui"
MODULE_DIR = REPO / "FastMedSAM"
WIDGET_CODE = MODULE_DIR / "FastMedSAM.py"
ARTIFACTS = REPO / "Testing" / "Artifacts"
PANEL_PNG = ARTIFACTS / "FastMedSAM_panel.png"
SLICER_WIDGETS = {"qMRMLWidget", "qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget"}


def ui_widgets() -> Dict[str, str]:
    """objectName -> class of every widget in the .ui."""
    root = ET.parse(UI_FILE).getroot()
    names: Dict[str, str] = {}
    for widget in root.iter("widget"):
        name = widget.get("name")
        assert name not in names, f"widget name {name!r} is used twice in {UI_FILE.name}"
        names[name] = widget.get("class")
    return names


def names_used_by_widget_code() -> Set[str]:
    """Every `self.ui.<name>` in FastMedSAM.py plus the names it reaches through `panel` tables."""
    source = WIDGET_CODE.read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    used |= set(panel.TOOL_BUTTONS.values())
    used |= {widget for widget, _ in panel.SHORTCUTS.values()}
    for spec_name in ("litemedsam", "fastsam3d"):
        used |= set(panel.model_panel(spec_name, model_info(get_spec(spec_name))))
    return used


def test_ui_parses_and_declares_slicer_widgets() -> None:
    root = ET.parse(UI_FILE).getroot()
    assert root.findtext("class") == "FastMedSAM"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "FastMedSAM"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used_custom = {cls for cls in ui_widgets().values() if cls.startswith(("qMRML", "qSlicer", "ctk"))}
    assert used_custom <= declared, f"custom widgets used but not declared: {used_custom - declared}"


def test_every_widget_name_the_code_uses_exists() -> None:
    missing = names_used_by_widget_code() - set(ui_widgets())
    assert not missing, f"FastMedSAM.py uses widgets that {UI_FILE.name} lacks: {sorted(missing)}"


def test_timing_table_columns_match_the_history_rows() -> None:
    root = ET.parse(UI_FILE).getroot()
    table = next(w for w in root.iter("widget") if w.get("name") == "timingTable")
    headers = tuple(c.find("property/string").text for c in table.findall("column"))
    assert headers == HISTORY_COLUMNS
    record = TimingRecord("litemedsam", "cpu", "slice", {"encode": 1.0, "decode": 2.0, "total": 3.0}, {"total": 1.0}, 1, 1)
    assert len(format_history_row(record)) == len(headers)


def _ui_widget(name: str) -> ET.Element:
    return next(w for w in ET.parse(UI_FILE).getroot().iter("widget") if w.get("name") == name)


def test_pause_slider_is_horizontal_and_spans_the_knob() -> None:
    slider = _ui_widget("pauseSlider")
    assert slider.get("class") == "QSlider"
    properties = {p.get("name"): p[0].text for p in slider.findall("property")}
    assert properties["orientation"] == "Qt::Horizontal"
    assert (int(properties["minimum"]), int(properties["maximum"])) == (0, panel.PAUSE_STEPS)
    assert _ui_widget("pauseLabel").findtext("property/string") == "Speed ↔ accuracy:"
    assert _ui_widget("pauseAccurateLabel").findtext("property/string") == "accurate"  # left = the plain model
    assert _ui_widget("pauseFastLabel").findtext("property/string") == "fast"
    for knob in (0.0, 0.25, 0.37, 1.0):
        assert panel.pause_from_slider(panel.slider_value(knob)) == knob
    assert panel.slider_value(0.0) == 0 and panel.slider_value(1.0) == panel.PAUSE_STEPS


@pytest.mark.parametrize("model", [s.name for s in list_specs() if s.role == "model"])
def test_pause_slider_enabled_only_for_models_with_pause_heads(model: str) -> None:
    view = panel.model_panel(model, model_info(get_spec(model)), pause=0.25)
    slider = view["pauseSlider"]
    if supports_pause(model):
        assert slider == {"enabled": True, "toolTip": PAUSE_TOOLTIP}
        assert "plain model" in PAUSE_TOOLTIP and "faster" in PAUSE_TOOLTIP
        assert view["pauseValueLabel"] == {"text": "0.25", "enabled": True}
    else:
        assert slider["enabled"] is False
        assert slider["toolTip"].startswith(f"{model} has no token-pause heads"), slider["toolTip"]
        assert "litemedsam" in slider["toolTip"], "the reason should name the models that do pause"
        assert view["pauseValueLabel"] == {"text": "0 (plain model)", "enabled": False}
    for label in ("pauseAccurateLabel", "pauseFastLabel"):
        assert view[label] == {"enabled": slider["enabled"]}
    assert panel.model_panel(model, model_info(get_spec(model)))["pauseValueLabel"]["text"] == "0 (plain model)"


def test_pause_slider_greyed_until_torch_is_installed(monkeypatch) -> None:
    """Inside Slicer the panel loads before the Python dependencies: the slider says what to do."""
    monkeypatch.setitem(sys.modules, "FastMedSAMLib.pause", None)  # importing it now raises ImportError
    enabled, reason = pause_state("litemedsam")
    assert enabled is False and "install" in reason and "torch" in reason


@functools.lru_cache(maxsize=None)  # QUiLoader keeps no reference to registered classes: they must stay alive
def _stand_ins():
    from PySide6.QtWidgets import QComboBox, QHBoxLayout, QWidget

    class qMRMLWidget(QWidget):
        pass

    class qMRMLNodeComboBox(QComboBox):
        pass

    class qMRMLSegmentSelectorWidget(QWidget):
        """Two combo boxes (segmentation, segment) like the real selector."""

        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            self.segmentation, self.segment = QComboBox(self), QComboBox(self)
            layout.addWidget(self.segmentation)
            layout.addWidget(self.segment)

    return qMRMLWidget, qMRMLNodeComboBox, qMRMLSegmentSelectorWidget


@pytest.fixture(scope="module")
def qt_app():
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


def _load_panel(qt_app):
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader

    loader = QUiLoader()
    for cls in _stand_ins():
        loader.registerCustomWidget(cls)
    ui_file = QFile(str(UI_FILE))
    assert ui_file.open(QFile.ReadOnly)
    widget = loader.load(ui_file)
    ui_file.close()
    assert widget is not None, loader.errorString()
    return widget


def _figures_records() -> List[TimingRecord]:
    """The Logic test's measured timings (if it ran before), shown in the rendered panel."""
    path = ARTIFACTS / "slicer_logic_figures.json"
    if not path.exists():
        return []
    figures = json.loads(path.read_text(encoding="utf-8"))
    records = []
    for name, kind in (("box_propagation", "3D"), ("slice_prompt", "slice"), ("pause_knob", "3D")):
        if name in figures:
            f = figures[name]
            records.append(TimingRecord("litemedsam", "cpu", kind, f["session_ms"], f["logic_ms"],
                                        int(f.get("encoder_calls", 0)), int(f.get("slices", 1)),
                                        pause=float(f.get("pause", 0.0)),
                                        paused_fraction=float(f.get("paused_fraction", 0.0))))
    return records


def test_panel_loads_offscreen_and_renders_png(qt_app) -> None:
    from PySide6.QtWidgets import QLabel, QTableWidgetItem, QWidget

    widget = _load_panel(qt_app)
    for name, cls in ui_widgets().items():
        if name == "FastMedSAM" or cls in ("QSpacerItem",):
            continue
        child = widget.findChild(QWidget, name)
        if child is None and cls not in ("QHBoxLayout", "QVBoxLayout", "QGridLayout", "QFormLayout"):
            pytest.fail(f"widget {name!r} ({cls}) did not load")
        if child is not None and cls not in SLICER_WIDGETS:
            assert child.metaObject().className() == cls, (name, child.metaObject().className(), cls)

    def show_model(model: str, pause: float) -> None:
        """The state the module widget shows for `model`, from the same functions it uses."""
        widget.findChild(QWidget, "modelComboBox").setCurrentText(model)
        widget.findChild(QWidget, "pauseSlider").setValue(panel.slider_value(pause))
        for name, properties in panel.model_panel(model, model_info(get_spec(model)), pause=pause).items():
            control = widget.findChild(QWidget, name)
            for prop, value in properties.items():
                assert control.setProperty(prop, value), f"{name}.{prop} is not a Qt property"

    widget.findChild(QWidget, "modelComboBox").addItems([s.name for s in list_specs() if s.role == "model"])
    slider = widget.findChild(QWidget, "pauseSlider")
    show_model("medficientsam-l0", 0.25)  # no pause heads: greyed, with the reason
    assert not slider.isEnabled() and "no token-pause heads" in slider.toolTip()
    assert widget.findChild(QLabel, "pauseValueLabel").text() == "0 (plain model)"
    show_model("litemedsam", 0.25)
    assert slider.isEnabled() and slider.toolTip() == PAUSE_TOOLTIP and slider.value() == 25
    assert widget.findChild(QLabel, "pauseValueLabel").text() == "0.25"
    widget.findChild(QWidget, "downloadProgressBar").setVisible(False)
    widget.findChild(QWidget, "installDependenciesButton").setVisible(False)
    widget.findChild(QWidget, "inputVolumeSelector").addItem("CT lesion")
    selector = widget.findChild(QWidget, "segmentSelector")
    selector.segmentation.addItem("CT lesion FastMedSAM")
    selector.segment.addItem("lesion")
    records = _figures_records()
    if records:
        widget.findChild(QLabel, "latencyLabel").setText(format_overlay(records[-1]))
        table = widget.findChild(QWidget, "timingTable")
        table.setRowCount(len(records))
        for row, record in enumerate(reversed(records)):
            for column, text in enumerate(format_history_row(record)):
                table.setItem(row, column, QTableWidgetItem(text))
        table.resizeColumnsToContents()
    assert not widget.findChild(QWidget, "includePointButton").isEnabled()  # LiteMedSAM takes boxes only
    assert "point" in widget.findChild(QWidget, "includePointButton").toolTip()
    assert widget.findChild(QWidget, "roi3DButton").isEnabled()

    widget.resize(580, 880)
    widget.show()
    qt_app.processEvents()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert widget.grab().save(str(PANEL_PNG))
    print(f"\nrendered panel: {PANEL_PNG}")
    widget.close()

    from PIL import Image, ImageStat

    with Image.open(PANEL_PNG) as image:
        assert image.size[0] >= 400 and image.size[1] >= 700, image.size
        spread = ImageStat.Stat(image.convert("L")).stddev[0]
    assert spread > 10, "the rendered panel is blank"


def _cmake_list(text: str, variable: str) -> List[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set"
    return [item for item in match.group(1).split() if not item.startswith("#")]


def test_extension_layout_lists_every_file() -> None:
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({variable}\s", top), f"top-level CMakeLists.txt lacks {variable}"
    assert "add_subdirectory(FastMedSAM)" in top

    module = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = _cmake_list(module, "MODULE_PYTHON_SCRIPTS")
    resources = _cmake_list(module, "MODULE_PYTHON_RESOURCES")
    for item in scripts + resources:
        path = MODULE_DIR / item.replace("${MODULE_NAME}", "FastMedSAM")
        assert path.is_file(), f"{item} is listed in FastMedSAM/CMakeLists.txt but does not exist"
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    listed = {s.replace("${MODULE_NAME}", "FastMedSAM") for s in scripts}
    assert on_disk <= listed, f"scripts missing from FastMedSAM/CMakeLists.txt: {sorted(on_disk - listed)}"
    # the engine, the registry and the panel resources are installed beside the module (see FastMedSAM/CMakeLists.txt)
    assert "${FASTMEDSAM_ROOT}/FastMedSAMLib/*.py" in module and "models/registry.json" in module
    for resource in _cmake_list(module, "FASTMEDSAM_ROOT_RESOURCES"):
        if not resource.startswith("${FASTMEDSAM_MODEL_FILES"):
            assert (REPO / resource.replace("${MODULE_NAME}", "FastMedSAM")).is_file(), resource
    assert "WITH_GENERIC_TESTS" in module and "slicer_add_python_unittest" in module

    from PIL import Image

    for icon in ("Resources/Icons/FastMedSAM.png", "FastMedSAM/SegmentEditorFastMedSAMLib/SegmentEditorEffect.png"):
        with Image.open(REPO / icon) as image:
            assert image.format == "PNG" and min(image.size) >= 21, (icon, image.size)


@pytest.mark.parametrize("path", sorted(p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
                                        if "__pycache__" not in p.parts))
def test_module_sources_compile(path: str, tmp_path: Path) -> None:
    """The Slicer-only files (widget, effect) cannot be imported here; they must at least compile cleanly and
    define what Slicer looks for."""
    source = MODULE_DIR / path
    py_compile.compile(str(source), cfile=str(tmp_path / "out.pyc"), doraise=True)
    tree = ast.parse(source.read_text(encoding="utf-8"))
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    if path == "FastMedSAM.py":
        assert {"FastMedSAM", "FastMedSAMWidget", "FastMedSAMTest"} <= classes
    if path == "SegmentEditorFastMedSAM.py":  # a module without its Test class fails Slicer's runTest
        assert {"SegmentEditorFastMedSAM", "SegmentEditorFastMedSAMTest"} <= classes
    if path.endswith("SegmentEditorEffect.py"):
        assert "SegmentEditorEffect" in classes
