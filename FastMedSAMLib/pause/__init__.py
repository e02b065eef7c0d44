"""Token pausing: easy tokens stop computing mid-encoder, with a run-time knob `pause` in [0, 1].

pause = 0 is the plain model (no paused code runs at all); pause in (0, 1] maps to a threshold on the pause heads'
predicted error without retraining (1 = pause the most). See `tinyvit_paused` (mechanism), `train` (label-free
training), `heads` (file format, knob), `vit3d_paused` (3D ViT version).

Session hook: `paused_encoder(net, model_name, pause)` is None for pause = 0 (the Session keeps `net.encode`, the
plain model untouched), else a `PausedEncoder` (callable: (B, 3, 256, 256) -> embedding, with `.last_stats`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..errors import PauseError
from .knob import validate_pause


def pausable_models() -> Dict[str, str]:
    """model -> the registry entry of its pause heads (entries with role "pause-heads" name their `base` model; a
    model fine-tuned from a base with heads, whose image encoder is the base's, uses them too)."""
    from ..weights.registry import list_specs

    specs = list_specs()
    heads = {spec.base: spec.name for spec in specs if spec.role == "pause-heads" and spec.base}
    # a fine-tuned model that keeps its base's image encoder (litemedsam-refine) shares the base's heads
    heads.update({spec.name: heads[spec.base] for spec in specs if spec.role == "model" and spec.base in heads})
    return heads


def supports_pause(model: str) -> bool:
    """Whether `model` has pause heads (so its Session takes a pause knob other than 0)."""
    return model in pausable_models()


def heads_entry(model: str) -> str:
    """The registry name of `model`'s pause heads; PauseError naming the models that have some otherwise."""
    heads = pausable_models()
    if model not in heads:
        raise PauseError(f"model {model!r} has no pause heads; token pausing exists for: {', '.join(heads)}")
    return heads[model]


def heads_path(model: str) -> Path:
    """The verified pause heads file of `model` (sha256-checked against the registry)."""
    from ..weights.store import ensure_weights

    return ensure_weights(heads_entry(model))


def load_pause_heads(model: str, path: Optional[Union[str, Path]] = None):
    """Pause heads of `model`: the registry's committed file (sha256-verified), or the file at `path`, which
    must then match the registry's sha256 too (so a tampered copy is refused wherever it lies)."""
    from ..weights.registry import get_spec
    from .heads import load_heads

    spec = get_spec(heads_entry(model))
    return load_heads(heads_path(model) if path is None else path, spec.sha256, spec.base)  # heads name their encoder's model


def paused_encoder(net: Any, model: str, pause: Any, heads: Optional[Any] = None):
    """The encoder the Session runs for knob `pause`: None for 0 (use `net.encode`), else a `PausedEncoder`
    over `net.image_encoder` with the model's verified pause heads (or `heads`, already loaded)."""
    from .encoder import PausedEncoder

    value = validate_pause(pause)
    if value == 0.0:
        return None
    return PausedEncoder(net.image_encoder, heads if heads is not None else load_pause_heads(model), value)


__all__ = ["PauseError", "pausable_models", "supports_pause", "heads_entry", "validate_pause", "paused_encoder", "load_pause_heads", "heads_path"]
