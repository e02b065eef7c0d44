"""SAM's 2D prompt encoder, and the prompt encoder + mask decoder pair of LiteMedSAM (256 frame) and MedficientSAM
(512 frame). The mask decoder is shared with the 3D models (`mask_decoder.py`).

Module and parameter names follow the official SAM state_dict (`prompt_encoder.pe_layer.*`, ...). The arithmetic
follows SAM operation by operation (same op order, same float32 rounding), so outputs match the reference checkpoints
to the float32 noise floor.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from .base import SamModel
from .mask_decoder import MaskDecoder, TwoWayTransformer
from .sam_layers import Activation, LayerNorm2d, mask_downscaling  # noqa: F401  (LayerNorm2d is re-exported)

PointPrompt = Tuple[torch.Tensor, torch.Tensor]


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding: coords in [0,1] -> [sin, cos](2*pi*(2c-1) @ G), G is (2, dim/2)."""

    def __init__(self, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: Tuple[int, int]) -> torch.Tensor:
        """Dense PE of an (h, w) grid, (C, h, w); cell (r, c) encodes ((c+0.5)/w, (r+0.5)/h), x first."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        """PE of (B, N, 2) pixel coordinates (x, y) in a frame of `image_size` = (h, w)."""
        coords = coords.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._encode(coords.to(torch.float))


class PromptEncoder(nn.Module):
    """Boxes, points and low-res mask prompts -> (sparse (B, N, C), dense (B, C, h, w)) embeddings."""

    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: Tuple[int, int] = (64, 64),
        input_image_size: Tuple[int, int] = (256, 256),
        mask_in_chans: int = 16,
        activation: Activation = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0 negative point, 1 positive point, 2 box top-left, 3 box bottom-right
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(4)])
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = mask_downscaling(2, mask_in_chans, embed_dim, activation)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """(1, C, h, w) positional encoding of the image embedding grid."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, torch.zeros((points.shape[0], 1, 2), device=points.device)], dim=1)
            labels = torch.cat([labels, -torch.ones((labels.shape[0], 1), device=labels.device)], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        embedding[labels == -1] = 0.0
        embedding[labels == -1] += self.not_a_point_embed.weight
        embedding[labels == 0] += self.point_embeddings[0].weight
        embedding[labels == 1] += self.point_embeddings[1].weight
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        embedding[:, 0, :] += self.point_embeddings[2].weight
        embedding[:, 1, :] += self.point_embeddings[3].weight
        return embedding

    def _device(self) -> torch.device:
        return self.point_embeddings[0].weight.device

    def forward(
        self,
        points: Optional[PointPrompt] = None,
        boxes: Optional[torch.Tensor] = None,
        masks: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """points = (coords (B, N, 2) x/y pixels, labels (B, N)); boxes (B, 4) or (B, 1, 4) x0 y0 x1 y1;
        masks (B, 1, 4h, 4w) logits."""
        if points is not None:
            batch = points[0].shape[0]
        elif boxes is not None:
            batch = boxes.shape[0]
        elif masks is not None:
            batch = masks.shape[0]
        else:
            batch = 1
        sparse = torch.empty((batch, 0, self.embed_dim), device=self._device())
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
        return sparse, dense


def build_prompt_encoder_and_decoder(
    frame: int = 256,
    embed_dim: int = 256,
    embedding_size: int = 64,
    decoder_norm_eps: float = 1e-5,
    activation: Activation = nn.GELU,
    transformer_activation: Activation = nn.ReLU,
) -> Tuple[PromptEncoder, MaskDecoder]:
    """SAM's prompt encoder (prompt frame `frame`x`frame`) and mask decoder (TwoWayTransformer depth 2, 8 heads,
    MLP 2048, 3+1 mask tokens). `decoder_norm_eps` is the eps of the transformer's nn.LayerNorms (SAM 1e-5,
    MedficientSAM 1e-6); `activation` is used in mask downscaling/upscaling, `transformer_activation` in its MLPs."""
    prompt_encoder = PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=(embedding_size, embedding_size),
        input_image_size=(frame, frame),
        mask_in_chans=16,
        activation=activation,
    )
    transformer = TwoWayTransformer(
        depth=2,
        embedding_dim=embed_dim,
        num_heads=8,
        mlp_dim=2048,
        activation=transformer_activation,
        norm_eps=decoder_norm_eps,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=embed_dim,
        transformer=transformer,
        num_multimask_outputs=3,
        activation=activation,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return prompt_encoder, mask_decoder


def assemble_sam(image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> SamModel:
    """A SamModel in the 2D checkpoints' state_dict order (image encoder, mask decoder, prompt encoder)."""
    return SamModel(image_encoder, prompt_encoder, mask_decoder, decoder_before_prompt_encoder=True)
