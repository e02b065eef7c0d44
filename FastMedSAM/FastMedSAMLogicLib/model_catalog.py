"""What the panel shows about each model and which prompt tools it enables, read from the engine's registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

from FastMedSAMLib.weights.registry import ModelSpec, get_spec, list_specs

# panel tool -> the registry prompt type it produces
TOOLS: Dict[str, str] = {"include_point": "point", "exclude_point": "point", "box_2d": "box", "roi_3d": "box"}
TOOL_LABELS = {"include_point": "include point", "exclude_point": "exclude point", "box_2d": "2D box", "roi_3d": "3D box"}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    dimensionality: str
    prompts: Tuple[str, ...]
    licence: str
    size_bytes: int
    weights_state: str  # missing | verified | unchecked | unpinned | corrupt
    downloadable: bool  # an automatic source exists (else the weights are a manual download)

    @property
    def downloaded(self) -> bool:
        return self.weights_state in ("verified", "unchecked", "unpinned")

    def summary(self) -> str:
        size = f"{self.size_bytes / 2**20:.0f} MB" if self.size_bytes else "size unknown"
        return (
            f"{self.dimensionality} model, prompts: {', '.join(self.prompts)} | {size} | licence {self.licence} | "
            f"weights: {self.weights_text}"
        )

    @property
    def weights_text(self) -> str:
        if self.downloaded:
            return "downloaded"
        if self.weights_state == "missing" and not self.downloadable:
            return "missing (manual download, see the model registry)"
        return self.weights_state


def model_info(spec: ModelSpec) -> ModelInfo:
    try:
        from FastMedSAMLib.weights.store import cache_state

        state = cache_state(spec.name)
    except ImportError:  # inside Slicer before the Python dependencies are installed
        state = "unknown until the Python dependencies are installed"
    return ModelInfo(
        name=spec.name,
        description=spec.description,
        dimensionality=spec.dimensionality,
        prompts=spec.prompts,
        licence=spec.licence,
        size_bytes=spec.size or 0,
        weights_state=state,
        downloadable=any(source.auto for source in spec.sources),
    )


def tool_states(model: str) -> Dict[str, Tuple[bool, str]]:
    """tool -> (enabled, tooltip). A disabled tool's tooltip says which prompts the model takes instead."""
    spec = get_spec(model)
    states = {}
    for tool, prompt in TOOLS.items():
        if prompt in spec.prompts:
            states[tool] = (True, f"Place {TOOL_LABELS[tool]} prompts")
        else:
            states[tool] = (False, f"{spec.name} does not take {prompt} prompts (it takes: {', '.join(spec.prompts)})")
    if spec.dimensionality == "3D":
        states["box_2d"] = (False, f"{spec.name} is a 3D model: it segments the volume, not one slice")
    return states


PAUSE_TOOLTIP = (
    "Token pausing. Left end (0): the plain model, exactly. Slide right to let easy image regions stop computing "
    "part-way through the image encoder: faster encoding, slightly less exact masks. Changing it keeps the loaded "
    "model, and slices already encoded at a setting stay cached."
)


def pause_state(model: str) -> Tuple[bool, str]:
    """(enabled, tooltip) of the speed <-> accuracy knob: only models with token-pause heads take it."""
    try:
        from FastMedSAMLib.pause import supports_pause
    except ImportError:  # inside Slicer before torch is installed
        return False, "Token pausing needs the Python dependencies (torch): install them first"
    if supports_pause(model):
        return True, PAUSE_TOOLTIP
    with_heads = ", ".join(spec.name for spec in list_specs() if spec.role == "model" and supports_pause(spec.name))
    return False, f"{model} has no token-pause heads, so it always runs the plain model (token pausing: {with_heads})"


def propagates(model: str) -> bool:
    """2D box models turn a 3D box into a volume mask slice by slice; 3D models predict the volume directly."""
    spec = get_spec(model)
    return spec.dimensionality == "3D" or "box" in spec.prompts


def takes_mask(model: str) -> bool:
    """Models that refine a previous mask (litemedsam-refine): each click on a slice refines the segment there."""
    return "mask" in get_spec(model).prompts and get_spec(model).dimensionality == "2D"


def prefetches(model: str) -> bool:
    """Slice models encode each slice once for every prompt on it, so encoding the viewed slices ahead pays;
    3D point models encode a crop around each prompt."""
    return get_spec(model).dimensionality == "2D"
