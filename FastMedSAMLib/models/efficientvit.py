"""EfficientViT-L backbone and SAM neck: the image encoder of MedficientSAM (EfficientViT-SAM L0/L1/L2).

Module names follow the official state_dict layout (`backbone.stages.i.op_list.j.main.*`, `neck.input_ops.*`, ...).
Every norm uses eps 1e-6 and every activation is GELU(tanh), as the reference sets them after construction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .sam_layers import LayerNorm2d

EPS = 1e-6
WIDTHS = (32, 64, 128, 256, 512)
QKV_DIM = 32


def _gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


class ConvLayer(nn.Module):
    """conv ("same" padding) -> BatchNorm2d (optional) -> GELU(tanh) (optional)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: bool = True,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=bias
        )
        self.norm = nn.BatchNorm2d(out_channels, eps=EPS) if norm else None
        self.act = _gelu() if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class ResBlock(nn.Module):
    """3x3 conv BN GELU -> 3x3 conv BN."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.conv2 = ConvLayer(channels, channels, 3, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class FusedMBConv(nn.Module):
    """3x3 conv to `mid` channels (BN, GELU) -> 1x1 conv to `out_channels` (BN)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.spatial_conv = ConvLayer(in_channels, mid_channels, 3, stride=stride)
        self.point_conv = ConvLayer(mid_channels, out_channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class MBConv(nn.Module):
    """The "fewer-norm" inverted bottleneck: 1x1 conv+bias GELU -> depthwise 3x3 conv+bias GELU -> 1x1 conv BN."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.inverted_conv = ConvLayer(in_channels, mid_channels, 1, bias=True, norm=False)
        self.depth_conv = ConvLayer(mid_channels, mid_channels, 3, stride=stride, groups=mid_channels, bias=True, norm=False)
        self.point_conv = ConvLayer(mid_channels, out_channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class Residual(nn.Module):
    """`main(x) + x`, or `main(x)` alone for the stride-2 blocks that open a stage."""

    def __init__(self, main: nn.Module, shortcut: bool = True) -> None:
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + x if self.shortcut else self.main(x)


class OpSequential(nn.Module):
    def __init__(self, ops: Sequence[nn.Module]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention (heads of dim 32; one extra 5x5-aggregated scale)."""

    def __init__(self, channels: int, dim: int = QKV_DIM, scale: int = 5, eps: float = 1.0e-15) -> None:
        super().__init__()
        heads = channels // dim
        total = heads * dim
        self.dim = dim
        self.eps = eps
        self.qkv = ConvLayer(channels, 3 * total, 1, norm=False, act=False)
        self.aggreg = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(3 * total, 3 * total, scale, padding=scale // 2, groups=3 * total, bias=False),
                    nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
                )
            ]
        )
        self.proj = ConvLayer(2 * total, channels, 1, act=False)

    def _linear_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        # The quadratic form the reference uses when H*W <= dim is the same sum in another order, so one path serves.
        b, _, h, w = qkv.shape
        qkv = qkv.float().reshape(b, -1, 3 * self.dim, h * w)
        q = F.relu(qkv[:, :, : self.dim])
        k = F.relu(qkv[:, :, self.dim : 2 * self.dim])
        v = F.pad(qkv[:, :, 2 * self.dim :], (0, 0, 0, 1), mode="constant", value=1.0)
        out = torch.matmul(torch.matmul(v, k.transpose(-1, -2)), q)
        out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        return out.reshape(b, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        return self.proj(self._linear_attention(qkv).to(qkv.dtype))


class EfficientViTBlock(nn.Module):
    """x + LiteMLA(x), then x + MBConv_e6(x)."""

    def __init__(self, channels: int, expand_ratio: int = 6) -> None:
        super().__init__()
        self.context_module = Residual(LiteMLA(channels))
        self.local_module = Residual(MBConv(channels, channels, channels * expand_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


class EfficientViTLargeBackbone(nn.Module):
    """Five stages (res, fmb, fmb, mb, att) at strides 2..32; returns every stage's output."""

    def __init__(self, depths: Sequence[int], widths: Sequence[int] = WIDTHS, in_channels: int = 3) -> None:
        super().__init__()
        w0 = widths[0]
        stages = [OpSequential([ConvLayer(in_channels, w0, 3, stride=2)] + [Residual(ResBlock(w0)) for _ in range(depths[0])])]
        for stage, (c_in, c_out, depth) in enumerate(zip(widths[:-1], widths[1:], depths[1:]), start=1):
            if stage <= 2:
                ops: List[nn.Module] = [Residual(FusedMBConv(c_in, c_out, 16 * c_in, stride=2), shortcut=False)]
                ops += [Residual(FusedMBConv(c_out, c_out, 4 * c_out)) for _ in range(depth)]
            elif stage == 3:
                ops = [Residual(MBConv(c_in, c_out, 16 * c_in, stride=2), shortcut=False)]
                ops += [Residual(MBConv(c_out, c_out, 4 * c_out)) for _ in range(depth)]
            else:
                ops = [Residual(MBConv(c_in, c_out, 24 * c_in, stride=2), shortcut=False)]
                ops += [EfficientViTBlock(c_out) for _ in range(depth)]
            stages.append(OpSequential(ops))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class Resize(nn.Module):
    """Bicubic (align_corners=False) resize to a fixed square size; identity when already there."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)


class SamNeck(nn.Module):
    """Fuse stages 4, 3, 2: 1x1 conv+BN to 256 and bicubic to 64x64 each, sum, FusedMBConv stack, 1x1 conv+bias."""

    def __init__(
        self,
        depth: int,
        in_channels: Sequence[int] = (WIDTHS[4], WIDTHS[3], WIDTHS[2]),
        width: int = 256,
        out_channels: int = 256,
        size: int = 64,
    ) -> None:
        super().__init__()
        self.input_ops = nn.ModuleList(
            [OpSequential([ConvLayer(c, width, 1, act=False), Resize(size)]) for c in in_channels]
        )
        self.middle = OpSequential([Residual(FusedMBConv(width, width, width)) for _ in range(depth)])
        self.output_ops = nn.ModuleList([OpSequential([ConvLayer(width, out_channels, 1, bias=True, norm=False, act=False)])])

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """`features` in input_ops order (stage 4, stage 3, stage 2)."""
        x = [op(f) for op, f in zip(self.input_ops, features)]
        fused = x[-1]
        for t in reversed(x[:-1]):  # x0 + (x1 + x2): the reference's summation order
            fused = t + fused
        return self.output_ops[0](self.middle(fused))


@dataclass(frozen=True)
class EfficientViTSamConfig:
    depths: Tuple[int, int, int, int, int]
    neck_depth: int


CONFIGS = {
    "l0": EfficientViTSamConfig((1, 1, 1, 4, 4), 4),
    "l1": EfficientViTSamConfig((1, 1, 1, 6, 6), 8),
    "l2": EfficientViTSamConfig((1, 2, 2, 8, 8), 12),
}


class EfficientViTSamImageEncoder(nn.Module):
    """(B, 3, 512, 512) -> (B, 256, 64, 64) image embedding."""

    def __init__(self, config: EfficientViTSamConfig) -> None:
        super().__init__()
        self.backbone = EfficientViTLargeBackbone(config.depths)
        self.neck = SamNeck(config.neck_depth)
        self.norm = LayerNorm2d(256, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        return self.norm(self.neck([features[4], features[3], features[2]]))


def build_efficientvit_sam_encoder(variant: str) -> EfficientViTSamImageEncoder:
    if variant not in CONFIGS:
        raise KeyError(f"unknown EfficientViT-SAM variant {variant!r}; known: {', '.join(CONFIGS)}")
    return EfficientViTSamImageEncoder(CONFIGS[variant])
