"""Prompts in the model frame, shared by training and inference so both feed the decoder the same way.

The previous mask enters as a dense prompt: binary, resized into the 256 frame and mapped to +/-`MASK_LOGIT`
(a mask drawn by any tool works the same as one the model predicted). Points are (x, y) in frame pixels with
label 1 (include), 0 (exclude) or -1 (padding); with no box, the prompt encoder appends SAM's padding point."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

MASK_LOGIT = 6.0


def mask_prompt(frame_masks: torch.Tensor) -> torch.Tensor:
    """(B, S, S) bool -> (B, 1, S, S) float dense prompt."""
    return (frame_masks.float() * 2.0 - 1.0).unsqueeze(1) * MASK_LOGIT


def run_decoder(
    prompt_encoder: nn.Module,
    mask_decoder: nn.Module,
    embeddings: torch.Tensor,
    boxes: Optional[torch.Tensor] = None,
    points: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    masks: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, 256, 64, 64) embeddings + prompts -> (low-res logits (B, 1, 256, 256), predicted IoU (B, 1)).

    boxes (B, 4) x0 y0 x1 y1, points ((B, N, 2), (B, N)), masks (B, 1, 256, 256) from `mask_prompt`."""
    sparse, dense = prompt_encoder(points=points, boxes=None if boxes is None else boxes[:, None, :], masks=masks)
    return mask_decoder(
        image_embeddings=embeddings,
        image_pe=prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
