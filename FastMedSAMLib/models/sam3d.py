"""3D prompt encoder (points + low-res mask prompt) and 3D mask decoder of SAM-Med3D / FastSAM3D (the decoder is
SAM's, `mask_decoder.py`, on a 3D grid).

Module names follow the official state_dict (`prompt_encoder.pe_layer.*`, `mask_decoder.transformer.*`, ...).
Conventions the checkpoints were trained with (RECIPE §7): points are (d, h, w) voxel indices shifted by +0.5, a
padding point (0, 0, 0) with label -1 is appended after the shift, the Fourier PE is [sin, cos, sin], and the dense PE
encodes grid cell (i, j, k) as ((j+0.5)/8, (i+0.5)/8, (k+0.5)/8), i.e. with the first two axes swapped.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from ..errors import PromptError
from .mask_decoder import MaskDecoder
from .sam_layers import mask_downscaling

PointPrompt = Tuple[torch.Tensor, torch.Tensor]
Triple = Tuple[int, int, int]


class PositionEmbeddingRandom3D(nn.Module):
    """coords in [0,1]^3 -> [sin, cos, sin](2*pi*(2c-1) @ G), G is (3, dim/3). The sin block repeats (no 3rd set)."""

    def __init__(self, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        sin = torch.sin(coords)
        return torch.cat([sin, torch.cos(coords), sin], dim=-1)

    def forward(self, size: Triple) -> torch.Tensor:
        """Dense PE of a (D, H, W) grid, (C, D, H, W); cell (i, j, k) encodes ((j+.5)/H, (i+.5)/D, (k+.5)/W)."""
        device = self.positional_encoding_gaussian_matrix.device
        d, h, w = (
            (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in size
        )
        i, j, k = torch.meshgrid(d, h, w, indexing="ij")
        return self._encode(torch.stack([j, i, k], dim=-1)).permute(3, 0, 1, 2)

    def forward_with_coords(self, coords: torch.Tensor, image_size: Triple) -> torch.Tensor:
        """PE of (B, N, 3) voxel coordinates (d, h, w) in a volume of `image_size` = (D, H, W)."""
        # per-axis division by Python numbers: no host-to-device copy per click (and capturable in a CUDA graph)
        scaled = torch.stack([coords[..., axis] / float(n) for axis, n in enumerate(image_size)], dim=-1)
        return self._encode(scaled.to(torch.float))


class PromptEncoder3D(nn.Module):
    """Point and mask prompts -> (sparse (B, N+1, C), dense (B, C, 8, 8, 8)) embeddings. No box prompts."""

    def __init__(
        self,
        embed_dim: int = 384,
        image_embedding_size: Triple = (8, 8, 8),
        input_image_size: Triple = (128, 128, 128),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(2)])  # negative, positive
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = tuple(4 * n for n in image_embedding_size)
        self.mask_downscaling = mask_downscaling(3, mask_in_chans, embed_dim, nn.GELU)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """(1, C, 8, 8, 8) positional encoding of the image embedding grid."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        points = points + 0.5  # voxel centres
        points = torch.cat([points, torch.zeros((points.shape[0], 1, 3), device=points.device)], dim=1)
        labels = torch.cat([labels, -torch.ones((labels.shape[0], 1), device=labels.device, dtype=labels.dtype)], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        embedding[labels == -1] = 0.0
        embedding[labels == -1] += self.not_a_point_embed.weight
        embedding[labels == 0] += self.point_embeddings[0].weight
        embedding[labels == 1] += self.point_embeddings[1].weight
        return embedding

    def forward(
        self,
        points: Optional[PointPrompt] = None,
        boxes: Optional[torch.Tensor] = None,
        masks: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """points = (coords (B, N, 3) voxel (d, h, w), labels (B, N) 1/0/-1); masks (B, 1, 32, 32, 32) logits."""
        if boxes is not None:
            raise PromptError("3D point models (FastSAM3D, SAM-Med3D) take point prompts only, not boxes")
        if points is not None:
            coords, labels = points
            if coords.dim() != 3 or coords.shape[-1] != 3 or tuple(labels.shape) != tuple(coords.shape[:2]):
                raise PromptError(
                    "3D points must be coords (B, N, 3) and labels (B, N), "
                    f"got {tuple(coords.shape)} and {tuple(labels.shape)}"
                )
            batch = coords.shape[0]
        elif masks is not None:
            batch = masks.shape[0]
        else:
            batch = 1
        if masks is not None and tuple(masks.shape[1:]) != (1, *self.mask_input_size):
            shape = ", ".join(map(str, self.mask_input_size))
            raise PromptError(f"mask prompt must have shape (B, 1, {shape}), got {tuple(masks.shape)}")
        device = self.no_mask_embed.weight.device
        sparse = torch.empty((batch, 0, self.embed_dim), device=device)
        if points is not None:
            sparse = torch.cat([sparse, self._embed_points(*points)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense


class MaskDecoder3D(MaskDecoder):
    """SAM's mask decoder on an (8, 8, 8) grid -> (B, 1|3, 32, 32, 32) low-res logits and IoU predictions, with the 2D
    models' two-way transformer (ReLU MLP, LayerNorm eps 1e-5, cross-attention internal width transformer_dim / 2)."""

    def __init__(
        self,
        transformer_dim: int = 384,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__(
            transformer_dim,
            num_multimask_outputs=num_multimask_outputs,
            activation=nn.GELU,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
            spatial_dims=3,
        )
