"""Deterministic parity weights (shared/parity/RECIPE.md §1) and the fixture inputs (§2).

Every float tensor is drawn from its own generator, seeded by the sha256 of its state_dict key, so a state_dict
depends only on a fixture's `keys.json` (keys, shapes, tags) and `int_buffers.npz`; any model family can use it.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np
import torch

PathLike = Union[str, Path]
BASE_SCALE = 0.02

_DTYPES: Dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64}


def key_seed(key: str) -> int:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16)


def _draw(key: str, shape: Sequence[int]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(key_seed(key))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def _gain_scale(key: str, shape: Sequence[int]) -> float:
    if key.endswith("positional_encoding_gaussian_matrix"):
        return 1.0
    if len(shape) >= 2:
        return 1.0 / math.sqrt(math.prod(shape) // shape[0])
    return BASE_SCALE


def recipe_value(key: str, shape: Sequence[int], tag: str = "", gain: bool = False) -> torch.Tensor:
    """The float value of one state_dict entry under the base (or gain) recipe."""
    r = _draw(key, shape)
    if tag == "norm":
        return 1.0 + r * BASE_SCALE
    if tag == "running_var":
        return 1.0 + (r * BASE_SCALE).abs()
    return r * (_gain_scale(key, shape) if gain else BASE_SCALE)


def read_keys(keys_json: PathLike) -> List[Tuple[str, List[int], str, str]]:
    """keys.json entries as (key, shape, dtype, tag); tag is "" when absent."""
    entries = json.loads(Path(keys_json).read_text(encoding="utf-8"))
    return [(e[0], list(e[1]), e[2], e[3] if len(e) > 3 else "") for e in entries]


def recipe_state_dict(keys_json: PathLike, int_buffers: PathLike, gain: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """The full recipe state_dict, in keys.json order, ready for `load_state_dict(strict=True)`."""
    with np.load(int_buffers) as npz:
        ints = {k: npz[k] for k in npz.files}
    state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, shape, dtype, tag in read_keys(keys_json):
        if tag == "int_buffer":
            state[key] = torch.as_tensor(ints[key], dtype=_DTYPES[dtype]).reshape(shape)
        else:
            state[key] = recipe_value(key, shape, tag, gain).to(_DTYPES[dtype])
    return state


def recipe_model(name: str, parity_dir: PathLike, gain: bool = False) -> torch.nn.Module:
    """Registry model `name` holding its parity-recipe weights (strictly loaded, eval mode, on the CPU), from the
    fixture's `<name with _>.keys.json` and `.int_buffers.npz` in `parity_dir`: speed figures and device checks of
    models whose official weights cannot be had."""
    from ..errors import FastMedSAMError
    from . import build_model

    stem = name.replace("-", "_")
    keys, ints = Path(parity_dir) / f"{stem}.keys.json", Path(parity_dir) / f"{stem}.int_buffers.npz"
    if not keys.is_file() or not ints.is_file():
        raise FastMedSAMError(f"no parity recipe for {name}: {keys} / {ints} not found")
    net = build_model(name)
    net.load_state_dict(recipe_state_dict(keys, ints, gain), strict=True)
    return net.eval()


def recipe_checksum(state: Mapping[str, torch.Tensor]) -> Tuple[float, float]:
    """[sum, abs-sum] in float64 over all floating tensors (the fixtures' `recipe_checksum`)."""
    total = 0.0
    total_abs = 0.0
    for tensor in state.values():
        if tensor.is_floating_point():
            total += tensor.double().sum().item()
            total_abs += tensor.double().abs().sum().item()
    return total, total_abs


def fixture_image(io: Mapping[str, np.ndarray]) -> torch.Tensor:
    """The encoder input stored in an io.npz: float32(image_q) * image_scale (exact, image_scale a power of two)."""
    scale = np.float32(io["image_scale"])
    return torch.from_numpy(io["image_q"].astype(np.float32) * scale)


def encode_with_probes(model: torch.nn.Module, image: torch.Tensor, probe_names: Sequence[str]) -> Tuple[torch.Tensor, Dict[str, float]]:
    """`model.image_encoder(image)`, recording the float64 abs-sum of each named module's output (the fixtures'
    `probe_names` / `probe_stats`: a debugging aid that locates a mismatch inside the encoder)."""
    modules = dict(model.named_modules())
    abs_sums: Dict[str, float] = {}

    def record(name: str):
        return lambda _module, _inputs, out: abs_sums.__setitem__(name, out.double().abs().sum().item())

    hooks = [modules[name].register_forward_hook(record(name)) for name in probe_names]
    try:
        embedding = model.image_encoder(image)
    finally:
        for hook in hooks:
            hook.remove()
    return embedding, abs_sums
