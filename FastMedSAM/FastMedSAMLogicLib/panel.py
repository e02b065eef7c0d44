"""What the module panel shows for a model, as plain data (widget name -> state), so the Qt widget stays thin and
the headless UI test applies exactly what the widget applies."""
from __future__ import annotations

from typing import Dict, Tuple

from FastMedSAMLib.weights.registry import get_spec

from .model_catalog import TOOL_LABELS, ModelInfo, pause_state, propagates, tool_states

TOOL_BUTTONS: Dict[str, str] = {
    "include_point": "includePointButton",
    "exclude_point": "excludePointButton",
    "box_2d": "box2DButton",
    "roi_3d": "roi3DButton",
}

# key -> (widget name, action); the widget binds them to shortcuts only while the module is shown
SHORTCUTS: Dict[str, Tuple[str, str]] = {
    "I": ("includePointButton", "place include points"),
    "E": ("excludePointButton", "place exclude points"),
    "2": ("box2DButton", "draw a 2D box in a slice view"),
    "3": ("roi3DButton", "draw a 3D box (ROI)"),
    "Shift+S": ("segmentSliceButton", "segment the slice shown in the view under the pointer"),
    "P": ("propagateButton", "propagate to 3D"),
    "A": ("acceptButton", "accept the result"),
    "Z": ("undoButton", "undo the last prompt"),
    "C": ("clearButton", "clear the pending results and prompts"),
}

# Keys Slicer's view widgets handle themselves (Slicer source, SetKeyboardEventTranslation in
# Libs/MRML/DisplayableManager/vtkMRMLSliceIntersectionWidget.cxx: b f g r t v V, arrows, brackets, braces;
# vtkMRMLCameraWidget.cxx: b r plus minus, keypad; Modules/Loadable/Markups/VTKWidgets/vtkSlicerMarkupsWidget.cxx:
# s Delete BackSpace). A window-wide shortcut on one of them would take it away from the views.
VIEW_KEYS = frozenset("bfgrtvsBFGRTVS") | {"Left", "Right", "Up", "Down", "Delete", "Backspace", "[", "]", "{", "}",
                                           "+", "-"}


PAUSE_STEPS = 100  # the speed <-> accuracy slider runs 0..PAUSE_STEPS; the knob is value / PAUSE_STEPS


def slider_value(pause: float) -> int:
    return int(round(pause * PAUSE_STEPS))


def pause_from_slider(value: int) -> float:
    return value / PAUSE_STEPS


def pause_text(model: str, pause: float) -> str:
    """What the label beside the slider says: the knob the next prediction runs at."""
    if pause == 0.0 or not pause_state(model)[0]:
        return "0 (plain model)"
    return f"{pause:.2f}"


def control_states(model: str) -> Dict[str, Tuple[bool, str]]:
    """widget name -> (enabled, tooltip) for the prompt controls and the speed <-> accuracy slider under `model`."""
    spec = get_spec(model)
    states = {TOOL_BUTTONS[tool]: state for tool, state in tool_states(model).items()}
    if spec.dimensionality == "2D":
        states["segmentSliceButton"] = (True, "Segment the current slice from the prompts on it (S)")
    else:
        states["segmentSliceButton"] = (False, f"{spec.name} is a 3D model: use Propagate to 3D")
    if propagates(model):
        how = "slice by slice from the 3D box" if spec.dimensionality == "2D" else "the whole volume from the points"
        states["propagateButton"] = (True, f"Segment {how} (P)")
    else:
        states["propagateButton"] = (False, f"{spec.name} cannot segment in 3D")
    states["pauseSlider"] = pause_state(model)
    return states


def prompt_help(model: str) -> str:
    """One line for the panel: which prompt tools the model enables (with their keys), and why others are off."""
    key_of = {widget: key for key, (widget, _) in SHORTCUTS.items()}
    enabled, disabled = [], []
    for tool, (on, reason) in tool_states(model).items():
        label = f"{TOOL_LABELS[tool]} ({key_of[TOOL_BUTTONS[tool]]})"
        (enabled if on else disabled).append((label, reason))
    text = f"{model} prompts: {', '.join(label for label, _ in enabled)}."
    if disabled:
        text += " Off: " + "; ".join(f"{label}: {reason}" for label, reason in disabled) + "."
    return text


def model_panel(model: str, info: ModelInfo, downloading: bool = False,
                pause: float = 0.0) -> Dict[str, Dict[str, object]]:
    """widget name -> Qt properties to set (enabled, toolTip, text) for `model`: the prompt controls, the
    speed <-> accuracy slider at knob `pause`, the model description and the download button."""
    view: Dict[str, Dict[str, object]] = {
        name: {"enabled": enabled, "toolTip": tooltip} for name, (enabled, tooltip) in control_states(model).items()
    }
    view["modelInfoLabel"] = {"text": f"{info.description}\n{info.summary()}"}
    view["promptHelpLabel"] = {"text": prompt_help(model)}
    for label in ("pauseAccurateLabel", "pauseFastLabel"):  # the slider's end labels grey with it
        view[label] = {"enabled": view["pauseSlider"]["enabled"]}
    view["pauseValueLabel"] = {"text": pause_text(model, pause), "enabled": view["pauseSlider"]["enabled"]}
    view["downloadButton"] = {
        "enabled": info.downloadable and not info.downloaded and not downloading,
        "text": "Downloaded" if info.downloaded else ("Downloading..." if downloading else "Download"),
    }
    return view
