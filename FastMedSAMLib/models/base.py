"""The one protocol every model family implements.

A family module (litemedsam.py, medficientsam.py, fastsam3d.py, ...) builds a `SamModel`: an nn.Module whose
children are `image_encoder`, `prompt_encoder` and `mask_decoder`, so that its `state_dict()` has the official
checkpoint layout. `encode` maps a preprocessed tensor to an image embedding; `decode` maps the embedding plus
prompts (already in the model's input frame) to low-resolution logits and IoU predictions. No I/O happens here.

2D families also provide a `SliceAdapter` (pre/post-processing between an image slice and the model frame);
the Session owns everything else (intensity, caching, propagation, geometry).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from .window import Window


class SamModel(nn.Module):
    """image_encoder -> embedding; prompt_encoder + mask_decoder -> (low-res logits, iou)."""

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        decoder_before_prompt_encoder: bool = False,
    ) -> None:
        """Children register in state_dict order: the 2D checkpoints (LiteMedSAM, MedficientSAM) list the mask
        decoder before the prompt encoder, the 3D ones after it."""
        super().__init__()
        self.image_encoder = image_encoder
        if decoder_before_prompt_encoder:
            self.mask_decoder = mask_decoder
            self.prompt_encoder = prompt_encoder
        else:
            self.prompt_encoder = prompt_encoder
            self.mask_decoder = mask_decoder

    @torch.inference_mode()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)

    @torch.inference_mode()
    def decode(
        self,
        embedding: torch.Tensor,
        points: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        boxes: Optional[torch.Tensor] = None,
        masks: Optional[torch.Tensor] = None,
        multimask_output: bool = False,
        window: Optional[Window] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the frame's coordinates; with `window`, `embedding` is that window's (see `window.py`) and
        the logits cover the window only."""
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        image_pe = self.prompt_encoder.get_dense_pe()
        if window is not None:
            image_pe, dense = window.cells(image_pe), window.cells(dense)
        return self.mask_decoder(
            image_embeddings=embedding,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )


@dataclass(frozen=True)
class Frame:
    """How an (height, width) slice sits in the model's square input frame (resized, padded bottom/right)."""

    height: int
    width: int
    resized_height: int
    resized_width: int
    size: int

    @classmethod
    def fit(cls, height: int, width: int, size: int) -> "Frame":
        scale = size / max(height, width)
        return cls(height, width, int(height * scale + 0.5), int(width * scale + 0.5), size)

    def box_to_frame(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Box corners (pixel indices) into frame coordinates, truncated as the CVPR24 reference does."""
        s = self.size / max(self.height, self.width)
        return np.array([[int(x0 * s), int(y0 * s), int(x1 * s), int(y1 * s)]], dtype=np.float32)


class SliceAdapter(ABC):
    """Pre/post-processing of one 2D family: uint8 RGB slice <-> model frame."""

    size: int  # square input frame of the encoder (256 LiteMedSAM, 512 MedficientSAM)

    @abstractmethod
    def preprocess(self, rgb: np.ndarray) -> Tuple[torch.Tensor, Frame]:
        """(H, W, 3) uint8 -> (1, 3, size, size) float32 encoder input, and the frame it sits in."""

    @abstractmethod
    def postprocess(self, low_res_logits: torch.Tensor, frame: Frame) -> np.ndarray:
        """(1, 1, h, w) low-res logits -> (H, W) bool mask in the slice's pixel grid."""
