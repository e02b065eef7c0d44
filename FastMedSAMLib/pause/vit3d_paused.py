"""Token-paused forward of the 3D ViT encoder of FastSAM3D / SAM-Med3D-turbo (inference only).

Same contract as `tinyvit_paused`: before block d a `decide(d, features, indices)` callback may pause active tokens;
a paused token keeps its features to the end. In every later block:
* attention-free blocks (FastSAM3D's first ones): LayerNorm + MLP on the active tokens only;
* attention blocks: LayerNorm + qkv for every token (paused ones stay keys and values), but attention logits, the
  relative-position bias, the output projection, the residuals and the MLP for the active queries only.
The relative-position bias of the checkpoints mixes the query with the queries of its (d, h) row (see
`vit3d.Attention3D`), so q is projected for every token and the bias is gathered for the active rows.
The neck runs on the full grid. Dense attention only (not the sparse pattern), 128^3 input, batch size 1.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.vit3d import Attention3D, FastBlock3D, MLPBlock3D, PreNormBlock3D, ViT3DEncoder
from .tinyvit_paused import PauseStats

Decide = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def _attend_active(attn: Attention3D, x: torch.Tensor, active: torch.Tensor, grid: int, pad_to: Optional[int]) -> torch.Tensor:
    """Attention outputs (after proj) of the `active` tokens of a (N, C) map on a cubic `grid`, all tokens as keys.

    With `pad_to` = S > grid the keys include the zero-padded S^3 window (as SAM-Med3D's window blocks)."""
    n_tokens, c = x.shape
    s = pad_to or grid
    heads = attn.num_heads
    qkv = attn.qkv(x)
    if s != grid:
        padded = attn.qkv.bias.repeat(s, s, s, 1)
        padded[:grid, :grid, :grid] = qkv.view(grid, grid, grid, -1)
        qkv = padded.view(s**3, -1)
    q, k, v = qkv.view(s**3, 3, heads, -1).permute(1, 2, 0, 3).unbind(0)  # (heads, S^3, hd)
    rel_d, rel_h, rel_w = attn._rel_terms(q.unsqueeze(0), s)  # (1, heads, S, S, S, S)
    # real token index -> (d, h, w) on the S grid
    d, h, w = active // (grid * grid), active // grid % grid, active % grid
    flat = (d * s + h) * s + w
    # bias[query (d, h, w), key (kd, kh, kw)] = rel_d[d, h, w, kw] + rel_h[d, h, kd, kw] + rel_w[d, h, kh, kw]
    bias = (rel_d[0][:, d, h, w][:, :, None, None, :]
            + rel_h[0][:, d, h][:, :, :, None, :]
            + rel_w[0][:, d, h][:, :, None, :, :])
    out = F.scaled_dot_product_attention(q[:, flat].unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),
                                         attn_mask=bias.reshape(1, heads, active.numel(), s**3))
    return attn.proj(out[0].transpose(0, 1).reshape(active.numel(), c))


class PausedViT3D(nn.Module):
    """`ViT3DEncoder` volume (1, 1, 128, 128, 128) -> (embedding (1, 384, 8, 8, 8), PauseStats)."""

    def __init__(self, encoder: ViT3DEncoder) -> None:
        super().__init__()
        for block in encoder.blocks:
            if isinstance(block, (FastBlock3D, PreNormBlock3D)) and block.attn.sparse is not None:
                raise ValueError("the paused 3D encoder runs dense attention only; switch sparse attention off")
        self.encoder = encoder
        self.grid = encoder.img_size // encoder.patch_embed.proj.kernel_size[0]

    def forward(self, volume: torch.Tensor, decide: Optional[Decide] = None,
                features: Optional[Dict[int, torch.Tensor]] = None) -> Tuple[torch.Tensor, PauseStats]:
        enc, g = self.encoder, self.grid
        if volume.shape[0] != 1:
            raise ValueError(f"the paused encoder takes one volume at a time, got a batch of {volume.shape[0]}")
        x = (enc.patch_embed(volume) + enc.pos_embed).reshape(g**3, -1)
        active = torch.arange(g**3, device=x.device)
        stats = PauseStats()
        for depth, block in enumerate(enc.blocks):
            if features is not None:
                features[depth] = x
            if decide is not None and active.numel():
                paused = decide(depth, x.index_select(0, active), active)
                active = active[~paused]
            stats.grid_tokens.append(g**3)
            stats.grid_windows.append(1)
            stats.tokens.append(int(active.numel()))
            stats.windows.append(int(active.numel() > 0))
            if active.numel() == 0:
                continue
            x = x.index_copy(0, active, paused_block(block, x, active, g))
        return enc.neck(x.view(1, g, g, g, -1).permute(0, 4, 1, 2, 3)), stats


def paused_block(block: nn.Module, x: torch.Tensor, active: torch.Tensor, grid: int) -> torch.Tensor:
    """New features of the `active` tokens of a (N, C) map on a cubic `grid` after `block`."""
    xa = x.index_select(0, active)
    if isinstance(block, MLPBlock3D):
        y = block.norm2(xa)
        return y + block.mlp(y)
    if isinstance(block, FastBlock3D):
        y = block.norm2(xa + _attend_active(block.attn, block.norm1(x), active, grid, None))
        return y + block.mlp(y)
    if isinstance(block, PreNormBlock3D):
        y = xa + _attend_active(block.attn, block.norm1(x), active, grid, block.window_size or None)
        return y + block.mlp(block.norm2(y))
    raise TypeError(f"no paused forward for block type {type(block).__name__}")
