"""MedficientSAM L0/L1/L2: EfficientViT-SAM distilled from MedSAM, 512x512 input, box prompts in the 512 frame.

State dict layout = the Lightning `best.ckpt` minus its `model.` prefix, children in the order image_encoder,
mask_decoder, prompt_encoder. Every norm runs with eps 1e-6 (the reference sets it on the whole SAM, the mask
decoder's LayerNorms included).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ImageError
from .base import Frame, SamModel, SliceAdapter
from .efficientvit import build_efficientvit_sam_encoder
from .sam2d import assemble_sam, build_prompt_encoder_and_decoder

FRAME = 512
NORM_EPS = 1e-6


def build_medficientsam(variant: str) -> SamModel:
    """`variant` is "l0", "l1" or "l2"."""
    prompt_encoder, mask_decoder = build_prompt_encoder_and_decoder(frame=FRAME, decoder_norm_eps=NORM_EPS)
    return assemble_sam(build_efficientvit_sam_encoder(variant), prompt_encoder, mask_decoder)


def build_medficientsam_l0() -> SamModel:
    return build_medficientsam("l0")


def build_medficientsam_l1() -> SamModel:
    return build_medficientsam("l1")


def build_medficientsam_l2() -> SamModel:
    return build_medficientsam("l2")


class MedficientSAMAdapter(SliceAdapter):
    """MedficientSAM's inference pre/post-processing (MedSAMInferDataset, BaseSAM.postprocess_masks)."""

    size = FRAME

    def preprocess(self, rgb: np.ndarray) -> Tuple[torch.Tensor, Frame]:
        """(H, W, 3) uint8 -> longest side to 512 (torch bilinear on uint8), min-max to [0, 1] over the whole
        image, zero-padded bottom/right to (1, 3, 512, 512) float32."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ImageError(f"MedficientSAM needs an (H, W, 3) uint8 image, got {rgb.dtype} of shape {rgb.shape}")
        height, width = rgb.shape[:2]
        if min(height, width) < 1:
            raise ImageError(f"MedficientSAM got an empty image of shape {rgb.shape}")
        frame = Frame.fit(height, width, self.size)
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        if max(height, width) != self.size:
            image = F.interpolate(image, (frame.resized_height, frame.resized_width), mode="bilinear", align_corners=False)
        image = image.to(torch.float32)
        low, high = image.amin(), image.amax()
        image = (image - low) / torch.clip(high - low, min=1e-8)
        image = F.pad(image, (0, self.size - frame.resized_width, 0, self.size - frame.resized_height), value=0.0)
        return image, frame

    def postprocess(self, low_res_logits: torch.Tensor, frame: Frame) -> np.ndarray:
        """(1, 1, 256, 256) logits -> bilinear to 512, crop the resized image, bilinear to (H, W), logits > 0."""
        logits = F.interpolate(low_res_logits.float(), (frame.size, frame.size), mode="bilinear", align_corners=False)
        logits = logits[..., : frame.resized_height, : frame.resized_width]
        logits = F.interpolate(logits, (frame.height, frame.width), mode="bilinear", align_corners=False)
        return (logits[0, 0] > 0).cpu().numpy()
