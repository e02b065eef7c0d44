"""FastSAM3D (distilled 6-block student) and SAM-Med3D-turbo (12-block teacher): 3D point-prompt SAMs on 128^3 crops.

Both share the 3D prompt encoder and mask decoder (embed dim 384, 8^3 embedding grid, 32^3 low-res logits); they differ
only in the image encoder. `sparse` switches the encoder to 3D sparse attention (see `vit3d.SparsePattern`); the
official weights were trained with dense attention, which is the default.
"""
from __future__ import annotations

from typing import Optional

from .base import SamModel
from .sam3d import MaskDecoder3D, PromptEncoder3D
from .vit3d import SparsePattern, ViT3DEncoder

IMAGE_SIZE = 128
EMBED_GRID = 8
PROMPT_DIM = 384


def _assemble(encoder: ViT3DEncoder, sparse: Optional[SparsePattern]) -> SamModel:
    encoder.set_sparse_attention(sparse)
    prompt_encoder = PromptEncoder3D(
        embed_dim=PROMPT_DIM,
        image_embedding_size=(EMBED_GRID,) * 3,
        input_image_size=(IMAGE_SIZE,) * 3,
        mask_in_chans=16,
    )
    return SamModel(encoder, prompt_encoder, MaskDecoder3D(transformer_dim=PROMPT_DIM))


def build_fastsam3d(sparse: Optional[SparsePattern] = None) -> SamModel:
    """Depth 6, 6 heads, all global attention; blocks 0-1 attention-free, blocks 2-5 with FastSAM3D's MLP residual
    taken after norm2."""
    encoder = ViT3DEncoder(
        depth=6, num_heads=6, style="fastsam", mlp_only_blocks=2, img_size=IMAGE_SIZE, out_chans=PROMPT_DIM
    )
    return _assemble(encoder, sparse)


def build_sam_med3d_turbo(sparse: Optional[SparsePattern] = None) -> SamModel:
    """Depth 12, 12 heads, pre-norm blocks; window 14 (zero-padded 8^3 -> 14^3) except global blocks 2, 5, 8, 11."""
    encoder = ViT3DEncoder(
        depth=12,
        num_heads=12,
        style="prenorm",
        window_size=14,
        global_blocks=(2, 5, 8, 11),
        img_size=IMAGE_SIZE,
        out_chans=PROMPT_DIM,
    )
    return _assemble(encoder, sparse)
