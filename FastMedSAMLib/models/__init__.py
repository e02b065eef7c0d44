"""Model families behind one protocol (`base.SamModel`). `build_model(name)` gives the torch module with the
official state_dict layout and no weights; `load_model(name)` adds the verified weights from the user cache."""
from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from .base import SamModel, SliceAdapter

# registry name -> (module, builder function). Builders take no arguments and return a SamModel.
BUILDERS: Dict[str, Tuple[str, str]] = {
    "litemedsam": (".litemedsam", "build_litemedsam"),
    "litemedsam-refine": (".litemedsam", "build_litemedsam"),
    "medficientsam-l0": (".medficientsam", "build_medficientsam_l0"),
    "medficientsam-l1": (".medficientsam", "build_medficientsam_l1"),
    "medficientsam-l2": (".medficientsam", "build_medficientsam_l2"),
    "fastsam3d": (".fastsam3d", "build_fastsam3d"),
    "sam-med3d-turbo": (".fastsam3d", "build_sam_med3d_turbo"),
}

# 2D families: registry name -> (module, SliceAdapter class) doing that family's pre/post-processing.
ADAPTERS: Dict[str, Tuple[str, str]] = {
    "litemedsam": (".litemedsam", "LiteMedSAMAdapter"),
    "litemedsam-refine": (".litemedsam", "LiteMedSAMAdapter"),
    "medficientsam-l0": (".medficientsam", "MedficientSAMAdapter"),
    "medficientsam-l1": (".medficientsam", "MedficientSAMAdapter"),
    "medficientsam-l2": (".medficientsam", "MedficientSAMAdapter"),
}


def _lookup(table: Dict[str, Tuple[str, str]], name: str, what: str):
    if name not in table:
        raise KeyError(f"no {what} for model {name!r}; known: {', '.join(sorted(table))}")
    module, attribute = table[name]
    return getattr(import_module(module, __name__), attribute)


def builder(name: str) -> Callable[[], SamModel]:
    return _lookup(BUILDERS, name, "builder")


def slice_adapter(name: str) -> SliceAdapter:
    """The 2D pre/post-processing of model `name` (box models that work slice by slice)."""
    return _lookup(ADAPTERS, name, "2D slice adapter")()


def build_model(name: str) -> SamModel:
    """The architecture of registry model `name`, randomly initialised (for parity tests and training)."""
    return builder(name)()


def load_model(
    name: str, device: Union[str, torch.device] = "cpu", weights: Optional[Path] = None
) -> SamModel:
    """Build `name`, load its verified checkpoint (strict), move to `device`, switch to eval mode. A model with a
    `base` in the registry (litemedsam-refine) loads the base's checkpoint, then its own fine-tuned parts over it.

    Order matters: TinyViT caches its attention biases on `eval()`, so weights are loaded first."""
    from ..weights.registry import get_spec
    from ..weights.store import ensure_weights
    from .checkpoint import load_checkpoint, load_fine_tuned

    model = build_model(name)
    spec = get_spec(name)
    own = weights if weights is not None else ensure_weights(name)
    if spec.role == "model" and spec.base is not None:
        load_checkpoint(model, ensure_weights(spec.base))
        load_fine_tuned(model, own)
    else:
        load_checkpoint(model, own)
    return model.to(device).eval()
