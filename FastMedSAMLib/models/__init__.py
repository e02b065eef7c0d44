"""Model families behind one protocol (`base.SamModel`). `build_model(name)` gives the torch module with the
official state_dict layout and no weights; `load_model(name)` adds the verified weights from the user cache."""
from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from .base import SamModel

# registry name -> (module, builder function). Builders take no arguments and return a SamModel.
BUILDERS: Dict[str, Tuple[str, str]] = {
    "litemedsam": (".litemedsam", "build_litemedsam"),
    "medficientsam-l0": (".medficientsam", "build_medficientsam_l0"),
    "medficientsam-l1": (".medficientsam", "build_medficientsam_l1"),
    "medficientsam-l2": (".medficientsam", "build_medficientsam_l2"),
    "fastsam3d": (".fastsam3d", "build_fastsam3d"),
    "sam-med3d-turbo": (".fastsam3d", "build_sam_med3d_turbo"),
}


def builder(name: str) -> Callable[[], SamModel]:
    if name not in BUILDERS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(BUILDERS))}")
    module, function = BUILDERS[name]
    return getattr(import_module(module, __name__), function)


def build_model(name: str) -> SamModel:
    """The architecture of registry model `name`, randomly initialised (for parity tests and training)."""
    return builder(name)()


def load_model(
    name: str, device: Union[str, torch.device] = "cpu", weights: Optional[Path] = None
) -> SamModel:
    """Build `name`, load its verified checkpoint (strict), move to `device`, switch to eval mode.

    Order matters: TinyViT caches its attention biases on `eval()`, so weights are loaded first."""
    from ..weights import ensure_weights
    from .checkpoint import load_checkpoint

    model = build_model(name)
    load_checkpoint(model, weights if weights is not None else ensure_weights(name))
    return model.to(device).eval()
