"""The "torch-fp16" runtime's encoder: the eager image encoder under float16 autocast, for GPUs' half-precision
matrix units. Only the encoder: the decoder and the embeddings it returns stay float32 (SAM's LayerNorm2d squares
its input in the input's dtype, and the decoder's mask product is where boundary pixels are decided)."""
from __future__ import annotations

from typing import Callable

import torch


class AutocastEncoder:
    """(B, 3, S, S) -> float32 embedding, computed by `encode` under autocast to `dtype` on `device_type`."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], device_type: str,
                 dtype: torch.dtype = torch.float16) -> None:
        self.encode = encode
        self.device_type = device_type
        self.dtype = dtype

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            embedding = self.encode(image)
        return embedding.float()
