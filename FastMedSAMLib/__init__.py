"""FastMedSAM engine: image + prompts -> Session -> model -> mask + per-stage timings.

Pure Python (torch, numpy, SimpleITK); never imports Slicer, Qt or VTK.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .prompts import Box, Box3D, Point

__all__ = ["Session", "Prediction", "Box", "Box3D", "Point", "FastMedSAMError"]
__version__ = "0.1.0"

# Session pulls in torch; resolve it lazily so `import FastMedSAMLib` stays cheap (CLI start-up, Slicer module scan).
_LAZY = {"Session": ".session", "Prediction": ".session", "FastMedSAMError": ".errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
