"""Token-paused forward of LiteMedSAM's TinyViT encoder (inference only; the plain encoder is never modified).

Depths: the ten ViT blocks are numbered 0-9 (layers.1: 0-1 on the 128x128 grid, layers.2: 2-7 and layers.3: 8-9 on
64x64). Before block d a `decide(d, features, indices)` callback may pause any token still active; a paused token
stays paused to the end. In every later block:
* attention: windows whose tokens are all paused are skipped; in the other windows every token (paused ones with
  their stale features) is a key/value, and the output projection and residual run for active tokens only;
* LayerNorm + MLP run on the gathered active tokens only;
* paused tokens get a linear catch-up instead (per block, one Linear(C, C) standing in for the attention update and
  one for the MLP update, fitted by ridge regression on the frozen model, see `train.py`): measured, freezing
  tokens outright leaves them far outside the distribution the later blocks and the decoder expect (a random half
  of the tokens frozen from block 5 cost 14 DSC points; with catch-ups 0.7);
* the depthwise local conv (a replacing ConvBN, not a residual) runs on the full map, paused tokens included.
PatchMerging and the neck run on the full map. Across the 128 -> 64 merge a token stays active if any of its 2x2
children is; its pause depth is the latest of theirs.

Kernels: the convolutional parts (stem, MBConv stage, merges, local convs) run with BatchNorm folded into the
convolution, channels-last, and conv + GELU (and the MLP's fc1 + GELU) fused into one oneDNN call on CPU where the
torch build has it. Measured on one thread of the 2-core machine: the plain stem + MBConv stage + first merge take
~470 ms of a ~1.8 s encoder (slow im2col 1x1 convs, bias copies, separate GELUs over 256x256x256 maps), the fused
path ~220 ms; the whole encoder with nothing paused ~1.0 s vs ~1.7 s. Same function up to float rounding (~4e-6).
On CPU the MBConvs and merges then run in stripes of output rows and the token MLPs in blocks of tokens, so that
their wide intermediates stay in cache (see STRIPE_ROWS): bit-identical to the whole-map computation, the MBConv
stage 2.3x and the encoder ~1.2x faster again (2 threads: ~730 -> ~620 ms).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..models.tinyvit import ConvBN, MBConv, PatchMerging, TinyViT, TinyViTBlock, TokenMLP

HW = Tuple[int, int]
# decide(depth, features (Na, C) of the active tokens, their indices (Na,)) -> bool (Na,), True = pause now
Decide = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def _mkldnn_op(name: str) -> Optional[Callable]:
    """oneDNN's fused op `name` (convolution/linear + pointwise), when this torch build has it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return getattr(torch.ops.mkldnn, name)
    except (AttributeError, RuntimeError):
        return None


_CONV_POINTWISE = _mkldnn_op("_convolution_pointwise")
_LINEAR_POINTWISE = _mkldnn_op("_linear_pointwise")


def _needs_grad(x: torch.Tensor) -> bool:
    """The fused oneDNN ops have no backward: tuning (`tune.py`) takes the plain ops where gradients flow."""
    return torch.is_grad_enabled() and x.requires_grad


class FoldedConv(nn.Module):
    """A `ConvBN` with the BatchNorm's running statistics folded into the convolution's weight and bias,
    optionally followed by the exact (erf) GELU, fused into one oneDNN call on CPU where available."""

    def __init__(self, convbn: ConvBN, gelu: bool = False) -> None:
        super().__init__()
        conv, bn = convbn.c, convbn.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.register_buffer("weight", (conv.weight * scale.view(-1, 1, 1, 1)).detach().clone())
        self.register_buffer("bias", (bn.bias - bn.running_mean * scale).detach().clone())
        self.stride, self.padding, self.groups = list(conv.stride), list(conv.padding), conv.groups
        self.gelu = gelu

    def forward(self, x: torch.Tensor, padding: Optional[List[int]] = None) -> torch.Tensor:
        """`padding` (rows, columns) overrides the convolution's own (a stripe padded by its caller)."""
        padding = self.padding if padding is None else padding
        if _fused_cpu(x):
            attr = "gelu" if self.gelu else "none"
            return _CONV_POINTWISE(x, self.weight, self.bias, padding, self.stride, [1, 1], self.groups, attr,
                                   [], "none" if self.gelu else "")
        y = F.conv2d(x, self.weight, self.bias, self.stride, padding, 1, self.groups)
        return F.gelu(y) if self.gelu else y


def _fused_cpu(x: torch.Tensor) -> bool:
    return _CONV_POINTWISE is not None and x.is_cpu and not _needs_grad(x)


# Row blocks on the CPU: the wide intermediates (an MBConv's 256 channels at 256x256 = 64 MB, an MLP's 4x hidden
# width) made whole cost more in memory traffic than in arithmetic; in blocks that stay in cache the MBConv stage
# ran 2.3x and the encoder ~1.2x faster on the 2-core machine, with bit-identical results (tested).
STRIPE_ROWS = 8  # output rows of an MBConv / merge per stripe
MLP_ROWS = 1024  # tokens per block of a token MLP


def mlp_forward(mlp: TokenMLP, x: torch.Tensor) -> torch.Tensor:
    """TinyViT's token MLP (norm -> fc1 -> GELU -> fc2), per token: on CPU fc1 and the GELU fused, in blocks of
    MLP_ROWS tokens."""
    if _LINEAR_POINTWISE is None or not x.is_cpu or _needs_grad(x):
        return mlp.fc2(mlp.act(mlp.fc1(mlp.norm(x))))
    out = x.new_empty(x.shape[0], mlp.fc2.out_features)
    for start in range(0, x.shape[0], MLP_ROWS):
        rows = mlp.norm(x[start:start + MLP_ROWS])
        hidden = _LINEAR_POINTWISE(rows, mlp.fc1.weight, mlp.fc1.bias, "gelu", [], "none")
        out[start:start + MLP_ROWS] = mlp.fc2(hidden)
    return out


class FoldedTriple(nn.Module):
    """TinyViT's conv1 (1x1) -> GELU -> conv2 (3x3, pad 1, stride 1 or 2) -> GELU -> conv3 (1x1) units, folded: an
    MBConv (`residual`: GELU(x + ...)) or a PatchMerging (no residual). On CPU in stripes of output rows."""

    def __init__(self, block: Union[MBConv, PatchMerging], residual: bool) -> None:
        super().__init__()
        self.conv1 = FoldedConv(block.conv1, gelu=True)
        self.conv2 = FoldedConv(block.conv2, gelu=True)
        self.conv3 = FoldedConv(block.conv3)
        if self.conv2.weight.shape[2:] != (3, 3) or self.conv2.padding != [1, 1] or self.conv1.weight.shape[2:] != (1, 1):
            raise ValueError("FoldedTriple expects 1x1 -> 3x3 (padding 1) -> 1x1 convolutions")
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fused_cpu(x):
            y = self.conv3(self.conv2(self.conv1(x)))
            return F.gelu(x + y) if self.residual else y
        height, stride = x.shape[2], self.conv2.stride[0]
        out_height = (height - 1) // stride + 1
        out = None
        for top in range(0, out_height, STRIPE_ROWS):
            bottom = min(top + STRIPE_ROWS, out_height)
            first, last = top * stride - 1, (bottom - 1) * stride + 2  # conv2's input rows [first, last)
            hidden = self.conv1(x[:, :, max(first, 0):min(last, height)])
            pad = (max(0, -first), max(0, last - height))
            if any(pad):  # the zero rows conv2's own padding adds at the image's top and bottom
                hidden = F.pad(hidden, (0, 0, *pad)).contiguous(memory_format=torch.channels_last)
            y = self.conv3(self.conv2(hidden, padding=[0, 1]))
            if self.residual:
                y = F.gelu(x[:, :, top:bottom] + y)
            if out is None:
                out = y.new_empty(y.shape[0], y.shape[1], out_height, y.shape[3]).contiguous(memory_format=torch.channels_last)
            out[:, :, top:bottom] = y
        return out


@dataclass(frozen=True)
class WindowGeometry:
    """Where each token of an (H, W) grid sits in the zero-padded window partition of TinyViT."""

    window_of: torch.Tensor  # (N,) window index of each token
    slot_of: torch.Tensor  # (N,) position of each token inside its window (row-major)
    table: torch.Tensor  # (windows, w*w) token index at each window slot; N marks a padding slot
    count: int  # number of windows

    @classmethod
    def build(cls, hw: HW, window: int) -> "WindowGeometry":
        h, w = hw
        nh, nw = -(-h // window), -(-w // window)
        rows, cols = torch.meshgrid(torch.arange(nh * window), torch.arange(nw * window), indexing="ij")
        token = torch.where((rows < h) & (cols < w), rows * w + cols, torch.tensor(h * w))
        table = token.view(nh, window, nw, window).transpose(1, 2).reshape(nh * nw, window * window)
        r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        window_of = ((r // window) * nw + c // window).reshape(-1)
        slot_of = ((r % window) * window + c % window).reshape(-1)
        return cls(window_of, slot_of, table.contiguous(), nh * nw)

    def to(self, device: torch.device) -> "WindowGeometry":
        return WindowGeometry(self.window_of.to(device), self.slot_of.to(device), self.table.to(device), self.count)


@dataclass
class PauseStats:
    """What one paused forward computed. Lists are per ViT block (0-9)."""

    tokens: List[int] = field(default_factory=list)  # tokens entering the block (queries and MLP)
    grid_tokens: List[int] = field(default_factory=list)  # tokens in the block's grid
    windows: List[int] = field(default_factory=list)  # attention windows computed
    grid_windows: List[int] = field(default_factory=list)  # windows in the block's grid
    pause_depths: Optional[torch.Tensor] = None  # (h, w) final grid: depth each token paused at, len(blocks) if never

    def paused_fraction(self) -> List[float]:
        """Fraction of each block's tokens that were paused when it ran."""
        return [1.0 - t / g for t, g in zip(self.tokens, self.grid_tokens)]


Record = Callable[[int, str, torch.Tensor, torch.Tensor], None]  # (block, "attn"|"mlp", input, residual update)


def _paused_update(catchup: Optional[nn.Linear], x: torch.Tensor, paused: torch.Tensor) -> torch.Tensor:
    """x with the catch-up update added to the paused tokens (x itself when there is no catch-up)."""
    if catchup is None or paused.numel() == 0:
        return x
    return x.index_add(0, paused, catchup(x.index_select(0, paused)))


class _Block(nn.Module):
    """One TinyViT block driven on a (N, C) token matrix with an optional set of active token indices."""

    def __init__(self, block: TinyViTBlock, hw: HW) -> None:
        super().__init__()
        attn = block.attn
        self.hw, self.window = hw, block.window
        self.heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.norm, self.qkv, self.proj, self.mlp = attn.norm, attn.qkv, attn.proj, block.mlp
        self.local_conv = FoldedConv(block.local_conv)
        self.register_buffer("bias", attn.attention_biases[:, attn.attention_bias_idxs].detach().clone())
        self._geometries: Dict[HW, WindowGeometry] = {}  # per grid (the frame's, a crop's), built on first use

    def geometry(self, hw: HW) -> WindowGeometry:
        """The window partition of an (h, w) grid, on the block's device, built once per grid."""
        device = self.bias.device
        found = self._geometries.get(hw)
        if found is None or found.table.device != device:
            found = self._geometries[hw] = WindowGeometry.build(hw, self.window).to(device)
        return found

    def _attend(self, windows: torch.Tensor) -> torch.Tensor:
        """(nW, n, C) window tokens -> (nW, n, C) attention outputs before the projection."""
        b, n, c = windows.shape
        q, k, v = self.qkv(self.norm(windows)).view(b, n, self.heads, -1).split(self.head_dim, dim=3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        # one fused kernel, the (heads, n, n) bias broadcast over the windows: the logits are never materialised
        # (the bias expanded per window and baddbmm + softmax + bmm took 17 % more time for the whole encoder)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias.unsqueeze(0), scale=self.scale)
        return out.transpose(1, 2).reshape(b, n, c)

    def conv(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        """Local depthwise conv of the full (N, C) map on an (h, w) grid, channels-last (no copy either way)."""
        h, w = hw
        c = x.shape[1]
        out = self.local_conv(x.view(1, h, w, c).permute(0, 3, 1, 2))
        return out.permute(0, 2, 3, 1).reshape(h * w, c)

    def dense(self, x: torch.Tensor, depth: int, record: Optional[Record] = None, hw: Optional[HW] = None) -> torch.Tensor:
        """Every token computed (the plain block, folded conv); `hw`: the grid when it is not the frame's."""
        hw = hw or self.hw
        geometry = self.geometry(hw)
        n_tokens, c = x.shape
        out = self._attend(torch.cat([x, x.new_zeros(1, c)])[geometry.table])
        update = self.proj(out.reshape(-1, c)[self._flat(torch.arange(n_tokens, device=x.device), None, geometry)])
        if record is not None:
            record(depth, "attn", x, update)
        x = self.conv(x + update, hw)
        update = mlp_forward(self.mlp, x)
        if record is not None:
            record(depth, "mlp", x, update)
        return x + update

    def forward(self, x: torch.Tensor, active: torch.Tensor, paused: torch.Tensor,
                catchup: Optional[nn.ModuleDict], adapter: Optional[nn.Module] = None,
                hw: Optional[HW] = None) -> Tuple[torch.Tensor, int]:
        """Only `active` tokens run attention queries and the MLP; `paused` ones get the catch-up updates (or
        nothing); `adapter`, when given, adds its update to the active tokens' output (they attend to stale
        paused keys/values). Returns the new map and the number of windows computed."""
        hw = hw or self.hw
        geometry = self.geometry(hw)
        c = x.shape[1]
        windows = 0
        if active.numel():
            used = torch.unique(geometry.window_of[active])
            windows = int(used.numel())
            out = self._attend(torch.cat([x, x.new_zeros(1, c)])[geometry.table[used]])
            update = self.proj(out.reshape(-1, c)[self._flat(active, used, geometry)])
        x = _paused_update(None if catchup is None else catchup["attn"], x, paused)
        if active.numel():
            x = x.index_add(0, active, update)
        x = self.conv(x, hw)
        x = _paused_update(None if catchup is None else catchup["mlp"], x, paused)
        if active.numel():
            xa = x.index_select(0, active)
            xa = xa + mlp_forward(self.mlp, xa)
            x = x.index_copy(0, active, xa if adapter is None else xa + adapter(xa))
        return x, windows

    def _flat(self, tokens: torch.Tensor, used: Optional[torch.Tensor], geometry: WindowGeometry) -> torch.Tensor:
        """Row of each token in the (used windows * w*w) output."""
        window = geometry.window_of[tokens]
        if used is not None:
            rank = torch.full((geometry.count,), -1, dtype=torch.long, device=tokens.device)
            rank[used] = torch.arange(used.numel(), device=tokens.device)
            window = rank[window]
        return window * self.window**2 + geometry.slot_of[tokens]


class PausedTinyViT(nn.Module):
    """TinyViT image -> embedding with token pausing (see module docstring). `catchup`: per block, a
    ModuleDict {"attn", "mlp"} of Linear(C, C) updates for paused tokens (None: paused tokens stay frozen);
    `adapters`: per block, an update for the active tokens of blocks that run with paused tokens (None: none).
    Neither runs while nothing is paused.

    Built for the LiteMedSAM 256 frame, whose window partitions it keeps; a smaller input (a crop of the frame)
    runs on its own grids, built on first use. Batch size 1 per forward."""

    def __init__(self, encoder: TinyViT, catchup: Optional[nn.ModuleList] = None, image_size: int = 256,
                 adapters: Optional[nn.ModuleList] = None) -> None:
        super().__init__()
        stem = encoder.patch_embed.seq
        self.stem = nn.ModuleList([FoldedConv(stem[0], gelu=True), FoldedConv(stem[2])])
        self.mbconvs = nn.ModuleList(FoldedTriple(b, residual=True) for b in encoder.layers[0].blocks)
        self.merges = nn.ModuleList([FoldedTriple(encoder.layers[0].downsample, residual=False)])
        blocks: List[_Block] = []
        self.stage_of: List[int] = []
        size = image_size // 2
        for stage_index, stage in enumerate(encoder.layers[1:]):
            for block in stage.blocks:
                blocks.append(_Block(block, (size, size)))
                self.stage_of.append(stage_index)
            if stage.downsample is not None:
                self.merges.append(FoldedTriple(stage.downsample, residual=False))
                size //= stage.downsample.conv2.c.stride[0]
        self.blocks = nn.ModuleList(blocks)
        self.neck = encoder.neck
        self.dims = [b.norm.normalized_shape[0] for b in blocks]
        if catchup is not None and len(catchup) != len(blocks):
            raise ValueError(f"{len(catchup)} catch-up updates for {len(blocks)} blocks")
        self.catchup = catchup
        if adapters is not None and len(adapters) != len(blocks):
            raise ValueError(f"{len(adapters)} adapters for {len(blocks)} blocks")
        self.adapters = adapters

    def front(self, image: torch.Tensor) -> torch.Tensor:
        """Stem + MBConv stage + first merge: image (1, 3, H, W) -> (N, C) tokens entering block 0."""
        return _tokens(self.front_map(image))

    def front_map(self, image: torch.Tensor) -> torch.Tensor:
        """The same as a (1, C, h, w) map (its grid is the tokens' grid)."""
        x = image.contiguous(memory_format=torch.channels_last)
        x = self.stem[1](self.stem[0](x))
        for block in self.mbconvs:
            x = block(x)
        return self.merges[0](x)

    def forward(self, image: torch.Tensor, decide: Optional[Decide] = None,
                features: Optional[Dict[int, torch.Tensor]] = None,
                record: Optional[Record] = None, tokens: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, PauseStats]:
        """image (1, 3, H, W) -> (embedding (1, 256, h, w), stats).

        `features`, when given, receives the full (N, C) token map entering each block and, under key
        len(blocks), the final tokens; `record` sees each dense block's residual updates (for fitting catch-ups);
        `tokens`: `front(image)` of a whole frame already computed (tuning reuses it; their grid is the frame's)."""
        if image.shape[0] != 1:
            raise ValueError(f"the paused encoder takes one image at a time, got a batch of {image.shape[0]}")
        stats = PauseStats()
        if tokens is None:  # any input size: a crop of the frame runs on its own, smaller grids
            front = self.front_map(image)
            x, hw = _tokens(front), (int(front.shape[-2]), int(front.shape[-1]))
        else:
            x, hw = tokens, self.blocks[0].hw
        never = len(self.blocks)
        depths = torch.full((x.shape[0],), never, dtype=torch.long, device=x.device)
        pausing = False
        for depth, block in enumerate(self.blocks):
            if depth and self.stage_of[depth] != self.stage_of[depth - 1]:
                x, depths, hw = self._merge(x, depths, hw, self.stage_of[depth])
            if features is not None:
                features[depth] = x
            if decide is not None:
                candidates = torch.nonzero(depths == never, as_tuple=False).view(-1)
                if candidates.numel():
                    paused = decide(depth, x.index_select(0, candidates), candidates)
                    depths = depths.index_fill(0, candidates[paused], depth)
                    pausing = pausing or bool(paused.any())
            windows = block.geometry(hw).count
            stats.grid_tokens.append(x.shape[0])
            stats.grid_windows.append(windows)
            if not pausing:
                x = block.dense(x, depth, record, hw)
                stats.tokens.append(x.shape[0])
                stats.windows.append(windows)
                continue
            active = torch.nonzero(depths == never, as_tuple=False).view(-1)
            resting = torch.nonzero(depths != never, as_tuple=False).view(-1)
            x, windows = block(x, active, resting, None if self.catchup is None else self.catchup[depth],
                               None if self.adapters is None else self.adapters[depth], hw)
            stats.tokens.append(int(active.numel()))
            stats.windows.append(windows)
        stats.pause_depths = depths.view(hw)
        if features is not None:
            features[never] = x
        return self.head(x, hw), stats

    def head(self, x: torch.Tensor, hw: Optional[HW] = None) -> torch.Tensor:
        """Tokens after the last block (N, C) on the grid `hw` (default: the frame's) -> embedding (1, 256, h, w)."""
        h, w = hw or self.blocks[-1].hw
        return self.neck(x.view(1, h, w, -1).permute(0, 3, 1, 2).contiguous())

    def paused_tokens(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        """Final (N, C) tokens when every token pauses at block `depth`: `x` (the map entering that block) goes
        through the remaining catch-up updates, local convs and merges only."""
        none = torch.zeros(0, dtype=torch.long, device=x.device)
        for later in range(depth, len(self.blocks)):
            if later > depth and self.stage_of[later] != self.stage_of[later - 1]:
                x, _, _ = self._merge(x, None, self.blocks[later - 1].hw, self.stage_of[later])
            every = torch.arange(x.shape[0], device=x.device)
            x, _ = self.blocks[later](x, none, every, None if self.catchup is None else self.catchup[later])
        return x

    def _merge(self, x: torch.Tensor, depths: Optional[torch.Tensor], hw: HW,
               stage: int) -> Tuple[torch.Tensor, Optional[torch.Tensor], HW]:
        """PatchMerging into `stage` on the full map (grid `hw`); a merged token's pause depth is the latest of its
        children. Returns the merged tokens, their depths and their grid."""
        h, w = hw
        merged = self.merges[stage](x.view(1, h, w, -1).permute(0, 3, 1, 2))
        nh, nw = merged.shape[-2:]
        if depths is not None and (nh, nw) != (h, w):
            pooled = F.adaptive_max_pool2d(depths.view(1, 1, h, w).float(), (nh, nw))
            depths = pooled.view(-1).long()
        return _tokens(merged), depths, (int(nh), int(nw))


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (H*W, C) row-major tokens (free for channels-last maps)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
