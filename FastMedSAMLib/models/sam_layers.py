"""Building blocks shared by the 2D (NCHW) and 3D (NCDHW) SAM families: channels-first LayerNorm, the per-rank conv
classes and the mask-prompt downscaling stack."""
from __future__ import annotations

from typing import Callable, Dict, Tuple, Type

import torch
from torch import nn

Activation = Callable[[], nn.Module]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over dim 1 of an (N, C, *grid) tensor, biased variance (SAM's LayerNorm2d / SAM-Med3D's LayerNorm3d)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        per_channel = (-1,) + (1,) * (x.dim() - 2)
        return self.weight.view(per_channel) * x + self.bias.view(per_channel)


# The class names are part of the checkpoints' norm tables (parity fixtures `*.norm_eps.json`).
class LayerNorm2d(ChannelLayerNorm):
    """ChannelLayerNorm of NCHW feature maps."""


class LayerNorm3d(ChannelLayerNorm):
    """ChannelLayerNorm of NCDHW feature maps."""


RankLayers = Tuple[Type[nn.Module], Type[nn.Module], Type[ChannelLayerNorm]]
_RANK_LAYERS: Dict[int, RankLayers] = {
    2: (nn.Conv2d, nn.ConvTranspose2d, LayerNorm2d),
    3: (nn.Conv3d, nn.ConvTranspose3d, LayerNorm3d),
}


def rank_layers(spatial_dims: int) -> RankLayers:
    """(conv, transposed conv, channel LayerNorm) classes for 2D or 3D feature maps."""
    if spatial_dims not in _RANK_LAYERS:
        raise ValueError(f"SAM layers exist for 2 or 3 spatial dims, not {spatial_dims}")
    return _RANK_LAYERS[spatial_dims]


def mask_downscaling(spatial_dims: int, mask_in_chans: int, embed_dim: int, activation: Activation) -> nn.Sequential:
    """Low-res mask prompt (B, 1, *4grid) -> dense embedding (B, embed_dim, *grid): two stride-2 convs, then 1x1."""
    conv, _, norm = rank_layers(spatial_dims)
    return nn.Sequential(
        conv(1, mask_in_chans // 4, kernel_size=2, stride=2),
        norm(mask_in_chans // 4),
        activation(),
        conv(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
        norm(mask_in_chans),
        activation(),
        conv(mask_in_chans, embed_dim, kernel_size=1),
    )
