"""3D ViT image encoder of FastSAM3D and SAM-Med3D-turbo (1x1x128^3 volume -> (1, 384, 8, 8, 8) embedding).

Module names follow the official state_dict (`patch_embed.proj`, `pos_embed`, `blocks.i.{norm1,attn,norm2,mlp}`,
`neck.*`).
Three block variants exist in the checkpoints:
* `PreNormBlock3D` (SAM-Med3D): x + attn(LN1 x), then + mlp(LN2 x). With `window_size` > 0 the grid is zero-padded to
  the window after LN1 and the padded (zero) tokens take part in attention unmasked, as in the reference.
* `FastBlock3D` (FastSAM3D attention blocks): y = x + attn(LN1 x); z = LN2 y; z + mlp(z) (MLP residual after the norm).
* `MLPBlock3D` (FastSAM3D's first blocks, no attention): y = LN2 x; y + mlp(y).

Attention adds the decomposed relative-position bias exactly as the reference computes it, mis-aligned broadcasting
included (see `Attention3D`); RECIPE §8's textbook formula is not what the checkpoints were trained with.
Attention is dense by default (what the official weights were trained with). `SparsePattern` switches it to 3D sparse
attention: tokens are permuted into dilated groups, each group attends only to itself (one batched SDPA call), and the
original token order is restored afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ImageError
from .sam_layers import LayerNorm3d

EPS = 1e-6
Triple = Tuple[int, int, int]


def _triple(value: "int | Sequence[int]") -> Triple:
    if isinstance(value, int):
        return (value, value, value)
    d, h, w = value
    return (int(d), int(h), int(w))


@dataclass(frozen=True)
class SparsePattern:
    """3D sparse attention: which tokens attend to each other.

    Each axis is cut into segments of `segment` tokens (None: the whole axis); inside a segment, tokens whose
    coordinates are equal modulo `dilation` form one group. A (D, H, W) grid thus has
    prod(D/segment) * prod(dilation) groups of prod(segment/dilation) tokens. dilation 1 and no segment = dense."""

    dilation: "int | Triple" = 2
    segment: "Optional[int | Triple]" = None

    def resolve(self, grid: Sequence[int]) -> Tuple[Triple, Triple]:
        """(segment, dilation) per axis for a (D, H, W) token grid; raises ValueError if they do not tile it."""
        dilation = _triple(self.dilation)
        segment = tuple(grid) if self.segment is None else _triple(self.segment)
        for n, s, r in zip(grid, segment, dilation):
            if r < 1 or s < 1 or n % s or s % r:
                raise ValueError(
                    f"sparse attention pattern segment={segment} dilation={dilation} "
                    f"does not tile the grid {tuple(grid)}"
                )
        return segment, dilation  # type: ignore[return-value]


def group_order(grid: Sequence[int], pattern: SparsePattern) -> torch.Tensor:
    """(groups, nd, nh, nw): the flat token indices (row-major, d slowest) of each sparse group's members.

    Along each axis a coordinate is seg * segment + i * dilation + o; a group is one (seg, o) per axis (groups in
    row-major order of (seg_d, o_d, seg_h, o_h, seg_w, o_w)) and its members form the sub-grid indexed by i."""
    (sd, sh, sw), (rd, rh, rw) = pattern.resolve(grid)
    d, h, w = grid
    flat = torch.arange(d * h * w).view(d // sd, sd // rd, rd, h // sh, sh // rh, rh, w // sw, sw // rw, rw)
    return flat.permute(0, 2, 3, 5, 6, 8, 1, 4, 7).reshape(-1, sd // rd, sh // rh, sw // rw)


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, order: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Attention inside token groups, all groups in one SDPA call, output in the original token order.

    q, k, v: (B, heads, N, hd). `order` (G, n) lists the token indices of each group; together they are a
    permutation of 0..N-1. bias: (B, heads, G, n, n) additive logits of each group. Returns (B, heads, N, hd)."""
    b, heads, _, hd = q.shape
    groups, n = order.shape
    perm = order.reshape(-1)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t[:, :, perm].view(b, heads, groups, n, hd).transpose(1, 2).reshape(b * groups, heads, n, hd)

    mask = bias.transpose(1, 2).reshape(b * groups, heads, n, n)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    out = out.view(b, groups, heads, n, hd).transpose(1, 2).reshape(b, heads, groups * n, hd)
    return out[:, :, torch.argsort(perm)]


def _relative_table(table: torch.Tensor, n: int) -> torch.Tensor:
    """R[i, j] = table[i - j + n - 1] for a table of length 2n - 1: (n, n, head_dim)."""
    if table.shape[0] != 2 * n - 1:
        raise ValueError(f"relative-position table of length {table.shape[0]} does not fit a grid of {n}")
    idx = torch.arange(n, device=table.device)
    return table[idx[:, None] - idx[None, :] + n - 1]


class Attention3D(nn.Module):
    """Multi-head self-attention over a (B, D, H, W, C) token grid with decomposed relative positions.

    logits = (q * hd^-0.5) k^T + bias. The bias is the one the official checkpoints were trained with, which is NOT the
    textbook decomposed rel-pos: the reference adds its three (query, key-coordinate) terms with mis-aligned
    broadcasting. With rel_a[(d, h, w), x] = q(d, h, w) . table_a[c_a - x + S - 1] (unscaled q, c_a the query's
    coordinate on axis a), the bias of query (d, h, w) and key (kd, kh, kw) on an S^3 grid is
        rel_d[(d, h, w), kw] + (rel_h[(d, h, kd), kw] + rel_w[(d, h, kh), kw]).
    It only broadcasts on cubic grids, which is all these models use.

    `pad_to` = S > D, H, W reproduces SAM-Med3D's window attention on a zero-padded S^3 grid: a zero token's
    q, k, v are the qkv bias, so the padding is added after `qkv`, and only the real tokens are computed as queries.

    Sparse mode (`sparse` set): tokens attend only inside the groups of `sparse` (one batched SDPA call), and each
    group's logits are exactly the dense logits restricted to that group: the rel-pos terms are evaluated on the full
    grid and gathered at the group members' true coordinates."""

    def __init__(self, dim: int, num_heads: int, rel_pos_grid: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * rel_pos_grid - 1, head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_grid - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_grid - 1, head_dim))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sparse: Optional[SparsePattern] = None

    def _rel_terms(self, q: torch.Tensor, s: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, heads, S^3, hd) unscaled queries -> rel_d, rel_h, rel_w, each (B, heads, S, S, S, S)."""
        r_q = q.reshape(*q.shape[:2], s, s, s, q.shape[-1])
        return (
            torch.einsum("bndhwc,dkc->bndhwk", r_q, _relative_table(self.rel_pos_d, s)),
            torch.einsum("bndhwc,hkc->bndhwk", r_q, _relative_table(self.rel_pos_h, s)),
            torch.einsum("bndhwc,wkc->bndhwk", r_q, _relative_table(self.rel_pos_w, s)),
        )

    def forward(self, x: torch.Tensor, pad_to: Optional[int] = None) -> torch.Tensor:
        b, d, h, w, c = x.shape
        s = d if pad_to is None else pad_to
        if not (d == h == w if pad_to is None else max(d, h, w) <= pad_to):
            raise ValueError(f"3D attention needs a cubic token grid, got {(d, h, w)} (pad_to={pad_to})")
        heads, n = self.num_heads, s**3
        qkv = self.qkv(x)
        if (d, h, w) != (s, s, s):
            padded = self.qkv.bias.repeat(b, s, s, s, 1)
            padded[:, :d, :h, :w] = qkv
            qkv = padded
        # channel order of qkv: [q | k | v], each head-major
        q, k, v = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        rel_d, rel_h, rel_w = self._rel_terms(q, s)
        if self.sparse is None:
            q = q.reshape(b, heads, s, s, s, -1)[:, :, :d, :h, :w].reshape(b, heads, d * h * w, -1)
            # axes (b, heads, d, h, w, kd, kh, kw); `out` keeps it contiguous, so the reshape below is free
            rel_hw = rel_h[:, :, :d, :h, :, None, :] + rel_w[:, :, :d, :h, None, :, :]
            bias = q.new_empty(b, heads, d, h, w, s, s, s)
            torch.add(rel_d[:, :, :d, :h, :w, None, None, :], rel_hw[:, :, :, :, None], out=bias)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.reshape(b, heads, d * h * w, n))
            return self.proj(out.transpose(1, 2).reshape(b, d, h, w, c))
        order = group_order((s, s, s), self.sparse).to(x.device)
        out = grouped_attention(q, k, v, order.flatten(1), self._group_bias(rel_d, rel_h, rel_w, order))
        return self.proj(out.transpose(1, 2).reshape(b, s, s, s, c)[:, :d, :h, :w])

    @staticmethod
    def _group_bias(rel_d: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """The dense bias restricted to each group of `order` (G, nd, nh, nw): (B, heads, G, n, n), same sums as dense.

        Each term depends on the key through one or two of its coordinates, which are shared along the group's rows,
        so it is gathered on those coordinates only and broadcast over the rest."""
        b, heads, s = rel_d.shape[:3]
        groups, nd, nh, nw = order.shape
        n = nd * nh * nw
        d, h, w = order // (s * s), order // s % s, order % s
        rows = order.reshape(groups, n, 1, 1)  # the query
        rows_dh = (d * s + h).reshape(groups, n, 1, 1)  # the query's (d, h)
        kd = d[:, :, 0, 0].reshape(groups, 1, nd, 1)  # the group's key coordinates along each axis
        kh = h[:, 0, :, 0].reshape(groups, 1, nh, 1)
        kw = w[:, 0, 0, :].reshape(groups, 1, 1, nw)
        rel_d = rel_d.reshape(b, heads, s**3, s)[:, :, rows, kw]  # (b, heads, G, n, 1, nw)
        rel_h = rel_h.reshape(b, heads, s * s, s, s)[:, :, rows_dh, kd, kw]  # (b, heads, G, n, nd, nw)
        rel_w = rel_w.reshape(b, heads, s * s, s, s)[:, :, rows_dh, kh, kw]  # (b, heads, G, n, nh, nw)
        rel_hw = rel_h[..., :, None, :] + rel_w[..., None, :, :]
        bias = torch.add(rel_d[..., None, :], rel_hw, out=rel_hw.new_empty(b, heads, groups, n, nd, nh, nw))
        return bias.reshape(b, heads, groups, n, n)


class MLP3D(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class PreNormBlock3D(nn.Module):
    """SAM-Med3D block: x + attn(LN1 x), then x + mlp(LN2 x).

    With `window_size` > 0 ("window" blocks) attention runs on the grid zero-padded to `window_size`^3 after LN1;
    the padded tokens are keys and values, unmasked. At 128^3 input one window (14^3) covers the 8^3 grid; a grid
    larger than the window (several windows) is not supported."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, grid: int, window_size: int = 0) -> None:
        super().__init__()
        if 0 < window_size < grid:
            raise ValueError(f"window {window_size} smaller than the {grid}^3 token grid is not supported")
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = Attention3D(dim, num_heads, window_size if window_size > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = MLP3D(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pad_to=self.window_size or None)
        return x + self.mlp(self.norm2(x))


class FastBlock3D(nn.Module):
    """FastSAM3D attention block: y = x + attn(LN1 x); z = LN2 y; z + mlp(z)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, grid: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = Attention3D(dim, num_heads, grid)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = MLP3D(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm2(x + self.attn(self.norm1(x)))
        return x + self.mlp(x)


class MLPBlock3D(nn.Module):
    """FastSAM3D attention-free block: y = LN2 x; y + mlp(y)."""

    def __init__(self, dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = MLP3D(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm2(x)
        return x + self.mlp(x)


class PatchEmbed3D(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)  # (B, D, H, W, C)


class ViT3DEncoder(nn.Module):
    """Patch embedding + absolute pos_embed, `depth` blocks, conv/LayerNorm3d neck to `out_chans`.

    style "fastsam": the first `mlp_only_blocks` blocks are attention-free, the rest `FastBlock3D` (all global).
    style "prenorm": `PreNormBlock3D`, windowed with `window_size` except the blocks in `global_blocks`."""

    def __init__(
        self,
        *,
        depth: int,
        num_heads: int,
        style: str,
        mlp_only_blocks: int = 0,
        window_size: int = 0,
        global_blocks: Sequence[int] = (),
        img_size: int = 128,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        mlp_ratio: float = 4.0,
        out_chans: int = 384,
    ) -> None:
        super().__init__()
        if style not in ("fastsam", "prenorm"):
            raise ValueError(f"unknown block style {style!r}")
        self.img_size = img_size
        self.in_chans = in_chans
        grid = img_size // patch_size
        mlp_dim = int(embed_dim * mlp_ratio)
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, embed_dim))
        blocks = []
        for i in range(depth):
            if style == "fastsam":
                block: nn.Module = (
                    MLPBlock3D(embed_dim, mlp_dim)
                    if i < mlp_only_blocks
                    else FastBlock3D(embed_dim, num_heads, mlp_dim, grid)
                )
            else:
                window = 0 if i in global_blocks else window_size
                block = PreNormBlock3D(embed_dim, num_heads, mlp_dim, grid, window)
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )

    def set_sparse_attention(self, pattern: Optional[SparsePattern]) -> None:
        """Use 3D sparse attention with `pattern` in every attention block (None: dense, the default)."""
        for module in self.modules():
            if isinstance(module, Attention3D):
                module.sparse = pattern

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_chans, self.img_size, self.img_size, self.img_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            raise ImageError(f"3D encoder input must have shape (B, {shape}), got {tuple(x.shape)}")
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))
