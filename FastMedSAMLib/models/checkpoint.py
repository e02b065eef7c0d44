"""Load weights from any checkpoint layout in circulation into a `SamModel`, strictly and with clear errors.

Layouts (keys are un-prefixed model keys `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*` unless noted):
* plain state_dict (LiteMedSAM `lite_medsam.pth`, upstream EfficientViT-SAM files);
* `{"model_state_dict": ...}` plus training state (FastSAM3D full, SAM-Med3D-turbo);
* `{"state_dict": ...}` (upstream EfficientViT-SAM), or a Lightning `state_dict` whose keys carry `model.`
  (MedficientSAM `best.ckpt`; only the `model.` keys are kept);
* FastSAM3D encoder-only: the encoder keys without `image_encoder.`; the prompt encoder and mask decoder then come from
  a second checkpoint, `decoder_from=` (SAM-Med3D-turbo);
* any of the above saved from `nn.DataParallel` (`module.` on every key).

Files are read with `torch.load(weights_only=True)`. Training state pickled beside the weights (argparse namespaces,
numpy scalars, optimiser classes, ...) is replaced by inert placeholders: nothing from the file is ever executed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import CheckpointError

Source = Union[str, Path, Mapping[str, Any]]
WRAPPERS = ("model_state_dict", "state_dict", "model")
ENCODER = "image_encoder."
SHOWN = 5  # keys listed per kind of mismatch


class LoadResult(NamedTuple):
    missing: List[str]
    unexpected: List[str]


class _Inert:
    """Stands in for any non-weight object pickled in a checkpoint; accepts construction and state, does nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Inert":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        error: Exception = exc
    try:  # globals that weights_only refuses (training state): retry with each one mapped to the inert placeholder
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        names = []
    if names:
        try:
            with torch.serialization.safe_globals([(_Inert, name) for name in names]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            error = exc
    lines = [line for line in str(error).splitlines() if line.strip()]
    raise CheckpointError(
        f"cannot read checkpoint {path} ({path.stat().st_size} bytes; truncated, corrupt or not a torch checkpoint): "
        f"{type(error).__name__}: {lines[-1] if lines else ''}"
    ) from error


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, name: str) -> Dict[str, torch.Tensor]:
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for wrapper in WRAPPERS:
            if _is_state_dict(obj.get(wrapper)):
                return dict(obj[wrapper])
        entries = ", ".join(map(str, list(obj)[:10]))
        raise CheckpointError(
            f"{name} holds no state_dict (looked for {', '.join(WRAPPERS)}); top-level entries: {entries}"
        )
    raise CheckpointError(f"{name} holds a {type(obj).__name__}, not a state_dict")


def _strip(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_state_dict(source: Source, model: nn.Module) -> Dict[str, torch.Tensor]:
    """The flat state_dict in `source` (a path, a loaded checkpoint or a state_dict), keyed like `model`'s."""
    name = str(source) if isinstance(source, (str, Path)) else "the given checkpoint"
    obj = _read_file(Path(source)) if isinstance(source, (str, Path)) else source
    state = _unwrap(obj, name)
    if any(k.startswith("model.") for k in state):  # Lightning module: the SAM is its `model`
        state = _strip(state, "model.")
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = _strip(state, "module.")
    expected = model.state_dict()
    parts = tuple(f"{child}." for child in model._modules)
    if not any(k.startswith(parts) for k in state) and any(ENCODER + k in expected for k in state):
        state = {ENCODER + k: v for k, v in state.items()}  # encoder-only checkpoint (FastSAM3D student)
    return state


def _describe(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> Tuple[List[str], List[str], List[str]]:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} (model {tuple(expected[k].shape)})"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    return missing, unexpected, wrong


def _listing(kind: str, items: List[str]) -> str:
    shown = ", ".join(items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")
    return f"{len(items)} {kind}: {shown}"


def load_checkpoint(
    model: nn.Module,
    path_or_state: Source,
    *,
    strict: bool = True,
    decoder_from: Optional[Source] = None,
) -> LoadResult:
    """Load `path_or_state` into `model` (in place; call `eval()` afterwards).

    `decoder_from`: a second checkpoint that supplies everything but the image encoder (prompt encoder and mask
    decoder), e.g. SAM-Med3D-turbo for an encoder-only FastSAM3D file; the image encoder then comes from
    `path_or_state` alone.
    strict (default): missing or unexpected keys raise CheckpointError; wrong shapes always do. Returns the keys that
    were missing from or unexpected in the checkpoint (non-empty only when strict=False)."""
    state = read_state_dict(path_or_state, model)
    if decoder_from is not None:
        rest = read_state_dict(decoder_from, model)
        state = {k: v for k, v in state.items() if k.startswith(ENCODER)}
        state.update((k, v) for k, v in rest.items() if not k.startswith(ENCODER))
    expected = model.state_dict()
    missing, unexpected, wrong = _describe(state, expected)
    problems = [("missing keys", missing), ("unexpected keys", unexpected)] if strict else []
    problems = [(kind, items) for kind, items in problems + [("wrong shapes", wrong)] if items]
    if problems:
        hint = ""
        if missing and all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in missing):
            hint = " (an encoder-only checkpoint? pass decoder_from= a full checkpoint, e.g. SAM-Med3D-turbo)"
        details = "; ".join(_listing(kind, items) for kind, items in problems)
        raise CheckpointError(f"checkpoint does not match {type(model).__name__}: {details}{hint}")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=strict)
    return LoadResult(missing, unexpected)


FINE_TUNED_PARTS = ("prompt_encoder.", "mask_decoder.")


def load_fine_tuned(model: nn.Module, source: Source, parts: Tuple[str, ...] = FINE_TUNED_PARTS) -> None:
    """Load a checkpoint holding exactly `model`'s keys under `parts` (any float dtype, cast to the model's) over
    weights already loaded; the rest of the model (the image encoder) is left as it is."""
    state = read_state_dict(source, model)
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(parts)}
    missing, unexpected, wrong = _describe(state, expected)
    problems = [(kind, items) for kind, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if items]
    if problems:
        details = "; ".join(_listing(kind, items) for kind, items in problems)
        raise CheckpointError(f"fine-tuned checkpoint does not match {', '.join(parts)} of {type(model).__name__}: {details}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)
