"""FastMedSAM engine: image + prompts -> Session -> model -> mask + per-stage timings.

Pure Python (torch, numpy, SimpleITK); never imports Slicer, Qt or VTK. The contract (`Prediction`, the prompt
types, `SessionLike`, the errors) imports without torch; `Session` loads torch when first touched.

Layout by role: `api` (contract), `session` (the local Session), `io/` (images, geometry, intensity, manifests),
`engines/` (slice and crop engines, embedding cache), `models/` (one file per model family), `pause/` (token
pausing), `runtime/` (devices), `weights/` (registry, verified downloads), `evaluation/` (metrics, protocols,
bench), `commands/` (the `fastmedsam` sub-commands).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .api import Prediction, SessionLike
from .errors import FastMedSAMError
from .prompts import Box, Box3D, Point

__all__ = ["Session", "RemoteSession", "SessionLike", "Prediction", "Box", "Box3D", "Point", "FastMedSAMError"]
__version__ = "0.1.0"

# Session pulls in torch; resolve it lazily so `import FastMedSAMLib` stays cheap (CLI start-up, Slicer module scan).
# RemoteSession is torch-free but lazy too: only a client needs its HTTP code.
_LAZY = {"Session": ".session", "RemoteSession": ".client.remote_session"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
