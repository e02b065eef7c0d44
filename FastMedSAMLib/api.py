"""The Session contract, torch-free: what a prediction carries, the stage names of its timings, the prompt types
and `SessionLike`, the protocol that the local `Session` and the server's `RemoteSession` both satisfy.

Importable without torch, so the Slicer module, the HTTP client and anything that only talks to a backend can use
it. Errors are the types in `errors.py` for every implementation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np

from .prompts import Box, Box3D, Point

STAGES = ("preprocess", "encode", "decode", "postprocess")  # + "total" on every Prediction


@dataclass
class Prediction:
    mask: np.ndarray  # (H, W) for a 2D box, (Z, Y, X) for a 3D box or a 3D point model
    timings: Dict[str, float]  # ms per stage: preprocess, encode (0 on a cache hit), decode, postprocess, total
    slice_index: Optional[int] = None
    z_range: Optional[Tuple[int, int]] = None
    encoder_calls: int = 0
    iou: float = float("nan")
    prompt: Dict[str, object] = field(default_factory=dict)
    # token pausing: fraction of tokens paused per encoder block (mean over the slices used), None when pause = 0
    paused_by_block: Optional[List[float]] = None
    # remote sessions only: ms spent queued on the server, on the server in all, and on the wire (round trip - server)
    transport: Dict[str, float] = field(default_factory=dict)

    @property
    def paused_fraction(self) -> float:
        """Fraction of the encoder's block-token computations that token pausing skipped (0 for the plain model)."""
        blocks = self.paused_by_block
        return float(sum(blocks) / len(blocks)) if blocks else 0.0


@runtime_checkable
class SessionLike(Protocol):
    """Interactive segmentation of one image at a time with one model, wherever the model runs.

    - `set_image(image, spacing=None, *, origin=None, direction=None, modality=None, window=None)`: a (Z, Y, X)
      volume, a (Y, X) or (Y, X, 3) image, a path or an `Image`; a failed call keeps the previous image.
    - `predict(box=None, points=None, mask=None) -> Prediction`: voxel-index prompts (`Box` with `z` on a volume,
      `Box3D`, `Point`s); bad prompts raise `PromptError` and change nothing.
    - `set_pause(p)`: the token-pausing knob in [0, 1]; `PauseError` for a bad value or a model without heads.
    - `prefetch(slices=None, center=None)`: encode a volume's slices in the background (`center` first, then
      outward) so later prompts on them skip the encoder; prompts pre-empt it and results never change.
      `PromptError` for a 2D image or a model that encodes per prompt.
    - `cache_info()` / `clear_cache()`: the embedding cache (entries, bytes, hits, misses, ...).
    """

    model_name: str
    pause: float

    def set_image(
        self,
        image: object,
        spacing: Optional[Sequence[float]] = None,
        *,
        origin: Optional[Sequence[float]] = None,
        direction: Optional[np.ndarray] = None,
        modality: Optional[str] = None,
        window: Optional[Tuple[float, float]] = None,
    ) -> None: ...

    def predict(
        self,
        box: Optional[Union[Box, Box3D]] = None,
        points: Optional[Sequence[Point]] = None,
        mask: Optional[np.ndarray] = None,
    ) -> Prediction: ...

    def set_pause(self, pause: float) -> None: ...

    def prefetch(self, slices: Optional[Sequence[int]] = None, center: Optional[int] = None) -> object: ...

    def cache_info(self) -> Dict[str, int]: ...

    def clear_cache(self) -> None: ...


__all__ = ["STAGES", "Prediction", "SessionLike", "Box", "Box3D", "Point"]
