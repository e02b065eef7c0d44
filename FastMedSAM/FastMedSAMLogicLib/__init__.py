"""Slicer-side logic of FastMedSAM: MRML nodes <-> the `FastMedSAMLib` Session. No Qt here, so it runs headless
(slicer-core) as well as inside the Slicer application."""
from importlib import import_module
from typing import Any

from .libpath import ensure_engine_importable

ensure_engine_importable()

__all__ = ["FastMedSAMLogic", "SegmentResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module(".logic", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
