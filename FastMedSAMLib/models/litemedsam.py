"""LiteMedSAM: TinyViT-5M encoder (256 input) + SAM prompt encoder/decoder, with the official CVPR24 2D
pre/post-processing (shared/docs/reference-baseline.md)."""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ImageError
from .base import Frame, SamModel, SliceAdapter
from .sam2d import assemble_sam, build_prompt_encoder_and_decoder
from .tinyvit import TinyViT

FRAME = 256


def build_litemedsam() -> SamModel:
    """LiteMedSAM with the state_dict layout of `lite_medsam.pth` (image_encoder, mask_decoder, prompt_encoder)."""
    prompt_encoder, mask_decoder = build_prompt_encoder_and_decoder(frame=FRAME, embedding_size=64)
    return assemble_sam(TinyViT(), prompt_encoder, mask_decoder)


class LiteMedSAMAdapter(SliceAdapter):
    """uint8 RGB slice -> INTER_AREA resize of the long side to 256 -> min-max [0, 1] -> pad bottom/right to 256;
    low-res logits -> crop to the resized size -> bilinear to the slice -> sigmoid > 0.5."""

    size = FRAME

    def preprocess(self, rgb: np.ndarray) -> Tuple[torch.Tensor, Frame]:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ImageError(
                f"LiteMedSAM needs an (H, W, 3) uint8 slice, got shape {rgb.shape} dtype {rgb.dtype}; "
                "convert grey slices to 3 channels and window intensities to 0-255 first"
            )
        height, width = rgb.shape[:2]
        frame = Frame.fit(height, width, self.size)
        if frame.resized_height < 1 or frame.resized_width < 1:
            raise ImageError(f"a {height}x{width} slice is too thin to resize to a {self.size} frame")
        resized = cv2.resize(
            np.ascontiguousarray(rgb), (frame.resized_width, frame.resized_height), interpolation=cv2.INTER_AREA
        )
        low = resized.min()
        scaled = (resized - low) / np.clip(resized.max() - low, 1e-8, None)  # uint8 - its min cannot wrap
        padded = np.zeros((self.size, self.size, 3), dtype=np.float32)
        padded[: frame.resized_height, : frame.resized_width] = scaled
        return torch.from_numpy(padded).permute(2, 0, 1).unsqueeze(0).contiguous(), frame

    def postprocess(self, low_res_logits: torch.Tensor, frame: Frame) -> np.ndarray:
        logits = low_res_logits[..., : frame.resized_height, : frame.resized_width]
        logits = F.interpolate(logits, size=(frame.height, frame.width), mode="bilinear", align_corners=False)
        return (torch.sigmoid(logits) > 0.5)[0, 0].cpu().numpy()
