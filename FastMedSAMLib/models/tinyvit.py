"""TinyViT image encoder in its LiteMedSAM variant (256 input, 64x64 output grid, SAM neck to 256 channels).

Module names follow the official state_dict (`patch_embed.seq.*`, `layers.i.blocks.j.*`, `layers.i.downsample.*`,
`neck.*`). The ViT stages run on tokens (B, N, C) with their grid size (H, W) passed alongside, and every block
is its own module with `forward(x, hw)`, so a caller can drive the blocks one by one (e.g. to pause tokens).
"""
from __future__ import annotations

import itertools
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .sam_layers import LayerNorm2d

HW = Tuple[int, int]


class ConvBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (children `c`, `bn`)."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        )
        self.add_module("bn", nn.BatchNorm2d(out_chans))


def tokens_to_map(x: torch.Tensor, hw: HW) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W)."""
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1])


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) tokens (row-major)."""
    return x.flatten(2).transpose(1, 2)


def window_partition(x: torch.Tensor, window: int) -> Tuple[torch.Tensor, HW]:
    """(B, H, W, C) -> (B*nH*nW, window*window, C) windows, row-major, after zero-padding bottom/right to a
    multiple of `window`; also returns the padded (H, W)."""
    b, h, w, c = x.shape
    pad_b = (window - h % window) % window
    pad_r = (window - w % window) % window
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    ph, pw = h + pad_b, w + pad_r
    nh, nw = ph // window, pw // window
    windows = x.view(b, nh, window, nw, window, c).transpose(2, 3).reshape(b * nh * nw, window * window, c)
    return windows, (ph, pw)


def window_unpartition(windows: torch.Tensor, window: int, padded_hw: HW, hw: HW) -> torch.Tensor:
    """Inverse of `window_partition`: windows -> (B, H, W, C), padding cropped."""
    ph, pw = padded_hw
    nh, nw = ph // window, pw // window
    c = windows.shape[-1]
    b = windows.shape[0] // (nh * nw)
    x = windows.view(b, nh, nw, window, window, c).transpose(2, 3).reshape(b, ph, pw, c)
    if (ph, pw) != tuple(hw):
        x = x[:, : hw[0], : hw[1]].contiguous()
    return x


def attention_bias_index(window: int) -> torch.Tensor:
    """(N, N) index into the per-head bias table for a window of N = window^2 points.

    Offsets (|drow|, |dcol|) are numbered in order of first appearance, query and key both row-major."""
    points = list(itertools.product(range(window), range(window)))
    offsets: dict = {}
    index = []
    for p in points:
        for q in points:
            offset = (abs(p[0] - q[0]), abs(p[1] - q[1]))
            index.append(offsets.setdefault(offset, len(offsets)))
    return torch.tensor(index, dtype=torch.long).view(len(points), len(points))


class WindowAttention(nn.Module):
    """LayerNorm -> qkv (split per head into q|k|v) -> softmax(q k^T * scale + bias) v -> proj, on (B', N, C)."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        index = attention_bias_index(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, int(index.max()) + 1))
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.norm(x)
        q, k, v = self.qkv(x).view(b, n, self.num_heads, -1).split(self.head_dim, dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        # gathered on every call: no cached bias can go stale when weights are loaded after eval()
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale + bias, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class TokenMLP(nn.Module):
    """LayerNorm -> fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """x + windowed attention -> depthwise local conv -> x + MLP, on tokens (B, H*W, C)."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float = 4.0, local_conv: int = 3) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = TokenMLP(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv, groups=dim)

    def attention(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        """The attention branch (no residual). Padded tokens pass the LayerNorm as zeros and take part unmasked."""
        h, w = hw
        if h == self.window and w == self.window:
            return self.attn(x)
        b, n, c = x.shape
        windows, padded = window_partition(x.view(b, h, w, c), self.window)
        return window_unpartition(self.attn(windows), self.window, padded, hw).view(b, n, c)

    def forward(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        x = x + self.attention(x, hw)
        x = map_to_tokens(self.local_conv(tokens_to_map(x, hw)))
        return x + self.mlp(x)


class MBConv(nn.Module):
    """1x1 expand -> GELU -> depthwise 3x3 -> GELU -> 1x1 project, + shortcut, then GELU."""

    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = ConvBN(chans, hidden)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, chans)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.act3(x + y)


class PatchMerging(nn.Module):
    """(B, C, H, W) -> 1x1 -> GELU -> depthwise 3x3 with `stride` -> GELU -> 1x1 -> (B, out, H/stride, W/stride)."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


class PatchEmbed(nn.Module):
    """LiteMedSAM stem: 1x1 Conv-BN to dim/2 -> GELU -> 1x1 Conv-BN to dim; no downsampling."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_chans, dim // 2), nn.GELU(), ConvBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks on a (B, C, H, W) map, then PatchMerging; returns the merged map."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, out_dim: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class ViTStage(nn.Module):
    """TinyViT blocks on tokens, then an optional PatchMerging; forward(x, hw) -> (x, hw)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        local_conv: int,
        out_dim: Optional[int],
        stride: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window, mlp_ratio, local_conv) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor, hw: HW) -> Tuple[torch.Tensor, HW]:
        for block in self.blocks:
            x = block(x, hw)
        if self.downsample is None:
            return x, hw
        merged = self.downsample(tokens_to_map(x, hw))
        return map_to_tokens(merged), (merged.shape[-2], merged.shape[-1])


class TinyViT(nn.Module):
    """image (B, 3, 256, 256) -> embedding (B, out_chans, 64, 64)."""

    def __init__(
        self,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        merge_strides: Sequence[int] = (2, 2, 1),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        stages: List[nn.Module] = [
            ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, embed_dims[1], merge_strides[0])
        ]
        for i in range(1, len(depths)):
            last = i == len(depths) - 1
            stages.append(
                ViTStage(
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    None if last else embed_dims[i + 1],
                    1 if last else merge_strides[i],
                )
            )
        self.layers = nn.ModuleList(stages)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def embed(self, image: torch.Tensor) -> Tuple[torch.Tensor, HW]:
        """Stem and convolutional stage: image -> tokens (B, N, C) entering `layers[1]`, and their grid."""
        x = self.layers[0](self.patch_embed(image))
        return map_to_tokens(x), (x.shape[-2], x.shape[-1])

    def head(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        """Tokens after the last stage -> image embedding (B, out_chans, H, W)."""
        return self.neck(tokens_to_map(x, hw))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x, hw = self.embed(image)
        for stage in self.layers[1:]:
            x, hw = stage(x, hw)
        return self.head(x, hw)
