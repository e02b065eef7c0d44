"""A square window of a 2D model's input frame that is encoded on its own ("prompt crop").

The window keeps the frame's scale: the encoder sees the frame's pixels inside it, at the resolution a whole-frame
encode would see them, so objects keep their size and only the context beyond the window is lost. Its embedding is
a block of the whole frame's embedding grid, so the decoder runs in the frame's coordinates: prompts are encoded as
for the whole frame, the positional encoding and the dense prompt are cut to the window's cells, and the window's
logits are put back into the frame (below-threshold elsewhere) before the usual postprocessing. Fewer tokens: a
128 px window of LiteMedSAM's 256 frame is a quarter of the tokens and about a quarter of the encoder's time.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import torch

from ..errors import RuntimeChoiceError

OUTSIDE_LOGIT = -32.0  # logits outside the window: certainly background
SIZE_STEP = 32  # window sides are multiples of this (fewer distinct windows to cache; whole merge grids)
MIN_SIZE = 64  # context for the smallest objects
MAX_FACTOR = 16.0


def validate_crop(crop: Any) -> Optional[float]:
    """The crop factor as a float in [1, MAX_FACTOR] (None: encode whole frames); else RuntimeChoiceError."""
    if crop is None:
        return None
    if isinstance(crop, bool) or not isinstance(crop, numbers.Real) or not 1.0 <= float(crop) <= MAX_FACTOR:
        raise RuntimeChoiceError(f"crop must be a number from 1 to {MAX_FACTOR:g} (the window's side over the box's "
                                 f"longer side) or None for whole frames, got {crop!r}")
    return float(crop)


@dataclass(frozen=True)
class Window:
    """`size` x `size` frame pixels from (`x0`, `y0`); `stride` frame pixels per embedding cell."""

    x0: int
    y0: int
    size: int
    stride: int

    @classmethod
    def around(cls, frame_box: Sequence[float], factor: float, frame: int, stride: int) -> "Window":
        """The window of side `factor` x the box's longer side (rounded up to SIZE_STEP, at least MIN_SIZE, at
        most the frame) centred on the frame-space box (x0, y0, x1, y1), moved inside the frame, its corner on
        the embedding grid."""
        x0, y0, x1, y1 = (float(v) for v in frame_box)
        size = math.ceil(max(x1 - x0, y1 - y0, 1.0) * factor / SIZE_STEP) * SIZE_STEP
        size = min(frame, max(MIN_SIZE, size))

        def start(centre: float) -> int:
            corner = round((centre - size / 2) / stride) * stride
            return int(min(max(0, corner), frame - size))

        return cls(start((x0 + x1) / 2), start((y0 + y1) / 2), size, stride)

    def covers(self, frame: int) -> bool:
        """Whether the window is the whole frame (then the frame is encoded as usual)."""
        return self.size >= frame

    def pixels(self, image: torch.Tensor) -> torch.Tensor:
        """The window of a (B, C, frame, frame) encoder input."""
        return image[..., self.y0:self.y0 + self.size, self.x0:self.x0 + self.size]

    @property
    def first_cell(self) -> Tuple[int, int]:
        """(row, column) of the window's first cell on the frame's embedding grid."""
        return self.y0 // self.stride, self.x0 // self.stride

    def cells(self, grid: torch.Tensor) -> torch.Tensor:
        """The window's cells of a (B, C, h, w) tensor on the frame's embedding grid."""
        (r, c), n = self.first_cell, self.size // self.stride
        return grid[..., r:r + n, c:c + n]

    def paste(self, logits: torch.Tensor, frame: int) -> torch.Tensor:
        """(B, M, n, n) low-resolution logits of the window -> the (B, M, N, N) low-resolution logits of the whole
        `frame` (N / frame = n / window size), OUTSIDE_LOGIT beyond the window."""
        n = logits.shape[-1]
        scale = n / self.size
        size, y0, x0 = round(frame * scale), round(self.y0 * scale), round(self.x0 * scale)
        out = logits.new_full((*logits.shape[:2], size, size), OUTSIDE_LOGIT)
        out[..., y0:y0 + n, x0:x0 + n] = logits
        return out
