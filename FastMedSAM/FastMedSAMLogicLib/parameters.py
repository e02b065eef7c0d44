"""The module's state in the scene (a vtkMRMLScriptedModuleNode), so saving and reloading a scene keeps it."""
from __future__ import annotations

from typing import Optional

from slicer import vtkMRMLScriptedModuleNode

from FastMedSAMLib.errors import FastMedSAMError

MODULE_NAME = "FastMedSAM"
DEFAULTS = {
    "Model": "litemedsam", "Device": "auto", "ShowOverlay": "true", "AutoRun": "true", "SegmentID": "", "Pause": "0.0",
}
REFERENCE_ROLES = ("InputVolume", "Segmentation", "ROI", "Box2D", "IncludePoints", "ExcludePoints")


class Parameters:
    """Typed access to the parameter node: node references plus a few strings."""

    def __init__(self, node: vtkMRMLScriptedModuleNode) -> None:
        self.node = node
        for name, value in DEFAULTS.items():
            if not node.GetParameter(name):
                node.SetParameter(name, value)

    @classmethod
    def get_or_create(cls, scene) -> "Parameters":
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLScriptedModuleNode")
            if node.GetAttribute("ModuleName") == MODULE_NAME:
                return cls(node)
        node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", MODULE_NAME)
        node.SetAttribute("ModuleName", MODULE_NAME)
        node.SetHideFromEditors(True)
        return cls(node)

    def reference(self, role: str):
        if role not in REFERENCE_ROLES:
            raise KeyError(f"unknown node role {role!r}; known: {', '.join(REFERENCE_ROLES)}")
        return self.node.GetNodeReference(role)

    def set_reference(self, role: str, mrml_node) -> None:
        if role not in REFERENCE_ROLES:
            raise KeyError(f"unknown node role {role!r}; known: {', '.join(REFERENCE_ROLES)}")
        self.node.SetNodeReferenceID(role, mrml_node.GetID() if mrml_node is not None else None)

    def get(self, name: str) -> str:
        return self.node.GetParameter(name)

    def set(self, name: str, value: str) -> None:
        self.node.SetParameter(name, value)

    def flag(self, name: str) -> bool:
        return self.get(name) == "true"

    def set_flag(self, name: str, value: bool) -> None:
        self.set(name, "true" if value else "false")

    @property
    def model(self) -> str:
        return self.get("Model")

    @property
    def device(self) -> str:
        return self.get("Device")

    @property
    def segment_id(self) -> Optional[str]:
        return self.get("SegmentID") or None

    @property
    def pause(self) -> float:
        """The token-pausing knob in [0, 1] (0 = the plain model)."""
        return _pause_value(self.get("Pause"))

    def set_pause(self, value: float) -> None:
        self.set("Pause", repr(_pause_value(value)))


def _pause_value(value) -> float:
    """The knob from the node's text (or a number): a float in [0, 1], else a clear error."""
    from FastMedSAMLib.pause import validate_pause  # torch-free, so the panel works before torch is installed

    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FastMedSAMError(f"the Pause parameter must be a number in [0, 1] (0 = the plain model), got {value!r}") from None
    return validate_pause(value)
