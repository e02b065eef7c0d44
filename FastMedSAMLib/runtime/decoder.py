"""SAM's 2D mask decoder rearranged for a CPU click: the same function, a third of the arithmetic, no layout copies.

A click on a cached slice runs the prompt encoder and the mask decoder (3.6 GFLOPs as written). Three exact
rearrangements remove most of it:

* **Attention through the few-token side.** Every cross attention pairs the 4096 image tokens with a handful of
  prompt tokens (T = 5 output tokens + 2 box corners). Projecting all image tokens to queries/keys/values costs
  4096 x 256 x 128 per projection; folding the projection into the prompt tokens' side instead (scores
  = image @ (W_h^T q_h), values mixed before their projection, the output projection folded into the token values)
  costs 4096 x 256 x (heads x T). Bias terms that are constant along the softmax axis drop out.
* **Only the tokens that are read.** The final token-to-image attention only feeds the IoU token and the mask
  token(s) the answer uses, and only those hypernetwork MLPs run.
* **Upscaling as two matrix products.** A stride-2, kernel-2 transposed convolution maps each input pixel to its own
  2x2 block, so both upscaling convolutions are matrix products on pixel rows (channels last, the channel LayerNorm
  and GELU on rows too), and the mask is one product with the hypernetwork vector; one reshuffle at the end puts the
  4x4 blocks in place.

What depends only on the image (its tokens plus the no-mask embedding, and with the positional encoding) is kept for
the few most recent embeddings. `DecoderCore` is everything after the prompt encoder as a plain function of tensors,
so the onnxruntime runtimes run its ONNX export. Results equal `SamModel.decode` up to float rounding (tested on
real slices with boxes, clicks, mask prompts and multimask output, torch and ONNX). Batches of embeddings take the
plain decoder.

With `image_dtype=torch.bfloat16` (the "torch-bf16" runtime) the image side is bfloat16: the cached image tokens,
the row-wise work over them and the upscaling, where nearly all the arithmetic is; on CPUs with bfloat16
dot-product instructions those products run 2-3x faster than in float32. The few prompt tokens stay float32 (in
bf16 their tiny products cost more in overhead than they save; autocast of the whole decoder gained only ~15 %).
Its masks are not float rounding of the float32 ones: they agree at Dice ~0.998 (README, *Runtimes*).
"""
from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import SamModel
from ..models.mask_decoder import Attention
from ..models.window import OUTSIDE_LOGIT, Window

RECENT = 4  # embeddings whose image side is kept (the viewed slice and its neighbours)
# Bytes of image tokens per block of the row-wise work on a CPU (1024 float32 or 2048 bfloat16 tokens of 256
# channels): blocks that fit in cache run about twice as fast as whole-image tensors
BLOCK_BYTES = 1 << 20
# A box's mask stays at its box: on the token-pausing split's images no positive logit of a box prompt lay more than
# 2 frame px beyond the box (117 calibration objects; 5 px on 198 evaluation objects), so for a box prompt the
# upscaling (a third of a click's decoder time) runs only for the cells within REGION_MARGIN_CELLS cells +
# REGION_MARGIN_SHARE x the prompts' extent of the box (and of a mask prompt's pixels). Clicks may reach farther
# (a refine click edits up to several of its depths away), so prompts with points keep every cell.
REGION_MARGIN_CELLS = 4  # 16 px of LiteMedSAM's 256 frame, 32 px of MedficientSAM's 512
REGION_MARGIN_SHARE = 0.25
Region = Tuple[int, int, int, int]  # cells r0, r1, c0, c1 (half-open) of an embedding grid


def prompt_region(frame: int, grid: Tuple[int, int], boxes: Optional[torch.Tensor],
                  points: Optional[Tuple[torch.Tensor, torch.Tensor]], masks: Optional[torch.Tensor],
                  window: Optional[Window] = None) -> Optional[Region]:
    """The cells of the (h, w) embedding grid (of `window` when given, else of the `frame` px frame) within the
    margin of a box prompt and the pixels above zero of its mask prompt (one prompt set); None (every cell) without
    a box or with points."""
    if boxes is None or points is not None:
        return None
    stride = frame / grid[0] if window is None else window.stride  # frame px per cell
    corners = [boxes.reshape(-1, 2).float().cpu()]
    if masks is not None:
        positive = masks.reshape(-1, *masks.shape[-2:]).amax(dim=0) > 0
        ys, xs = torch.nonzero(positive, as_tuple=True)
        if xs.numel():
            scale = frame / masks.shape[-1]  # frame px per mask px; a mask pixel covers [i, i + 1) x scale
            low = torch.stack([xs.min(), ys.min()]).float() * scale
            high = (torch.stack([xs.max(), ys.max()]).float() + 1) * scale - 1
            corners.append(torch.stack([low, high]).cpu())
    xy = torch.cat(corners)
    low, high = xy.min(dim=0).values, xy.max(dim=0).values
    margin = REGION_MARGIN_CELLS * stride + REGION_MARGIN_SHARE * float((high - low).max())
    offset = (0, 0) if window is None else window.first_cell

    def span(lo: float, hi: float, cells: int, shift: int) -> Tuple[int, int]:
        first = min(cells - 1, max(0, int(math.floor((lo - margin) / stride)) - shift))
        last = min(cells, int(math.ceil((hi + 1 + margin) / stride)) - shift)
        return first, max(first + 1, last)

    (r0, r1), (c0, c1) = span(low[1], high[1], grid[0], offset[0]), span(low[0], high[0], grid[1], offset[1])
    return r0, r1, c0, c1


@dataclass
class ImageSide:
    """The prompt-independent part of one (1, C, h, w) embedding without a mask prompt."""

    keys: torch.Tensor  # (N, C) image tokens + no-mask embedding
    keys_pe: torch.Tensor  # (N, C) the same + positional encoding
    window_pe: Optional[torch.Tensor] = None  # (N, C) a window's positional encoding, in the image dtype


def _head_weights(linear: torch.nn.Linear, heads: int) -> torch.Tensor:
    """An in-projection's weight (D, C) as (heads, D / heads, C)."""
    return linear.weight.view(heads, -1, linear.weight.shape[1])


def token_to_image(attn: Attention, queries: torch.Tensor, keys_pe: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """`attn(queries, keys_pe, keys)` for (T, C) queries over (N, C) image tokens, the key and value projections
    folded into the token side; the products with the image tokens run in their dtype."""
    heads = attn.num_heads
    q = attn._heads(attn.q_proj(queries)[None])[0]  # (H, T, d)
    scale = 1.0 / math.sqrt(q.shape[-1])
    g = (q @ _head_weights(attn.k_proj, heads)).reshape(-1, keys.shape[1]) * scale  # (H*T, C); k bias drops out
    weights = torch.softmax(g.to(keys.dtype) @ keys_pe.T, dim=-1)  # (H*T, N)
    mixed = (weights @ keys).to(q.dtype).view(heads, q.shape[1], -1)  # (H, T, C): values mixed before projection
    out = mixed @ _head_weights(attn.v_proj, heads).transpose(1, 2) + attn.v_proj.bias.view(heads, 1, -1)
    return attn.out_proj(out.transpose(0, 1).reshape(q.shape[1], -1))


def image_update(layer: Any, keys: torch.Tensor, keys_pe: torch.Tensor, queries: torch.Tensor, tokens: torch.Tensor,
                 key_pe: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The image side of a two-way layer, `norm4(keys + attn(keys_pe, queries + tokens, queries))`, for (N, C) image
    tokens over (T, C) tokens, with the query and output projections folded into the token side; returns the new
    image tokens and the same + positional encoding (in the image tokens' dtype). Each image token attends on its
    own, so the work runs in blocks that stay in cache."""
    attn = layer.cross_attn_image_to_token
    heads = attn.num_heads
    k = attn._heads(attn.k_proj(queries + tokens)[None])[0]  # (H, T, d)
    v = attn._heads(attn.v_proj(queries)[None])[0]
    scale = 1.0 / math.sqrt(k.shape[-1])
    count = k.shape[1]
    g = (k @ _head_weights(attn.q_proj, heads)).reshape(-1, keys_pe.shape[1]) * scale  # (H*T, C)
    offset = (k @ attn.q_proj.bias.view(heads, -1, 1)).reshape(-1, 1) * scale  # the query bias, per column
    out_weight = attn.out_proj.weight.view(attn.out_proj.weight.shape[0], heads, -1).transpose(0, 1)  # (H, C, d)
    values = v @ out_weight.transpose(1, 2)  # (H, T, C): values through out_proj
    # each head's weights sum to 1 over T, so out_proj's bias, split evenly over the heads, rides on the values
    values = (values + attn.out_proj.bias / heads).reshape(heads * count, -1)
    g, offset, values = g.to(keys.dtype), offset.to(keys.dtype), values.to(keys.dtype)
    new_keys, new_keys_pe = [], []
    for rows in _blocks(keys):
        # (H, T, n): the softmax runs over T along dim 1 (over a short last dim it is 15x slower)
        weights = torch.softmax(torch.addmm(offset, g, keys_pe[rows].T).view(heads, count, -1), dim=1)
        block = layer.norm4(torch.addmm(keys[rows], weights.view(heads * count, -1).T, values))
        new_keys.append(block)
        new_keys_pe.append(block + key_pe[rows])
    return torch.cat(new_keys), torch.cat(new_keys_pe)


def _blocks(rows: torch.Tensor) -> List[slice]:
    """Row blocks of the (N, C) `rows`: BLOCK_BYTES at a time on a CPU; one block elsewhere (a GPU pays per kernel
    launch)."""
    count = rows.shape[0]
    step = max(1, BLOCK_BYTES // rows[0].nbytes) if rows.device.type == "cpu" else count
    return [slice(i, min(i + step, count)) for i in range(0, count, step)]


def two_way_layer(layer: Any, queries: torch.Tensor, keys: torch.Tensor, keys_pe: torch.Tensor, tokens: torch.Tensor,
                  key_pe: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`TwoWayAttentionBlock.forward` on (T, C) queries and (N, C) image tokens; returns the new queries, image
    tokens and image tokens + positional encoding."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(queries[None], queries[None], queries[None])[0]
    else:
        q = (queries + tokens)[None]
        queries = queries + layer.self_attn(q, q, queries[None])[0]
    queries = layer.norm1(queries)
    queries = layer.norm2(queries + token_to_image(layer.cross_attn_token_to_image, queries + tokens, keys_pe, keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    return (queries, *image_update(layer, keys, keys_pe, queries, tokens, key_pe))


class BlockUpscaling(nn.Module):
    """`MaskDecoder.output_upscaling` followed by the hypernetwork product, on pixel rows.

    ConvTranspose2d(k=2, s=2) sends input pixel (i, j) to output block (2i + a, 2j + b): one (C_in, 4 * C_out)
    matrix product per pixel row. The rows stay in (pixel, a, b, a2, b2) order until the masks are formed."""

    def __init__(self, upscaling: torch.nn.Sequential, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        conv1, norm, self.act1, conv2, self.act2 = upscaling
        for name, tensor in zip(("w1", "b1", "w2", "b2"), (*self._as_matrix(conv1), *self._as_matrix(conv2))):
            self.register_buffer(name, tensor.to(dtype, copy=True))
        self.register_buffer("norm_weight", norm.weight.detach().clone())  # float32 (a LayerNorm takes bf16 rows too)
        self.register_buffer("norm_bias", norm.bias.detach().clone())
        self.eps = float(norm.eps)
        self.mid, self.out = int(conv1.weight.shape[1]), int(conv2.weight.shape[1])  # C/4, C/8 (plain ints: export)

    @staticmethod
    def _as_matrix(conv: torch.nn.ConvTranspose2d) -> Tuple[torch.Tensor, torch.Tensor]:
        if tuple(conv.kernel_size) != (2, 2) or tuple(conv.stride) != (2, 2):
            raise ValueError("BlockUpscaling expects SAM's kernel-2 stride-2 transposed convolutions")
        c_in, c_out = conv.weight.shape[:2]
        return conv.weight.detach().permute(0, 2, 3, 1).reshape(c_in, 4 * c_out), conv.bias.detach().repeat(4)

    def forward(self, keys: torch.Tensor, hyper: torch.Tensor, grid: Tuple[int, int],
                region: Optional[Region] = None) -> torch.Tensor:
        """(N, C) image tokens on an (h, w) grid, (M, C // 8) hypernetwork outputs -> (M, 4h, 4w) mask logits, in
        the image tokens' dtype (the matrices' own). With `region` (r0, r1, c0, c1) only those cells are upscaled
        (each cell makes its own 4x4 block: the same logits there) and every other logit is OUTSIDE_LOGIT."""
        h, w = grid
        if region is not None and region != (0, h, 0, w):
            r0, r1, c0, c1 = region
            inside = keys.view(h, w, -1)[r0:r1, c0:c1].reshape(-1, keys.shape[1])
            out = keys.new_full((hyper.shape[0], 4 * h, 4 * w), OUTSIDE_LOGIT)
            out[:, 4 * r0:4 * r1, 4 * c0:4 * c1] = self(inside, hyper, (r1 - r0, c1 - c0))
            return out
        hyper = hyper.to(self.w1.dtype)
        masks = []
        for block in _blocks(keys):  # in blocks of pixels that stay in cache (2x faster than whole on a CPU)
            rows = torch.addmm(self.b1, keys[block], self.w1).view(-1, self.mid)  # (n*4, C/4)
            rows = self.act1(F.layer_norm(rows, (self.mid,), self.norm_weight, self.norm_bias, self.eps))
            rows = self.act2(torch.addmm(self.b2, rows, self.w2)).view(-1, self.out)  # (n*16, C/8)
            masks.append(rows @ hyper.T)
        masks = torch.cat(masks).view(h, w, 2, 2, 2, 2, -1)  # (i, j, a, b, a2, b2, M)
        return masks.permute(6, 0, 2, 4, 1, 3, 5).reshape(-1, 4 * h, 4 * w)


class DecoderCore(nn.Module):
    """The decoder after the prompt encoder, for one embedding: (image tokens (N, C), the same + positional encoding,
    sparse prompt tokens (S, C)) -> (float32 mask logits (M, 4h, 4w), IoU predictions (M,)) for the single mask
    (M = 1) or, with `multimask`, the three multimask outputs. The image tokens come in `image_dtype`, the image-side
    matrices are kept in it; the prompt tokens are float32. A plain function of its tensors, so its float32
    single-mask form also exports to ONNX (`onnx_cache`)."""

    def __init__(self, net: SamModel, image_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        decoder = net.mask_decoder
        if not decoder.transformer.layers[0].skip_first_layer_pe:
            raise ValueError("the prepared decoder expects SAM's two-way transformer (first layer without query PE)")
        self.decoder = decoder
        with torch.inference_mode():
            pe = net.prompt_encoder.get_dense_pe()
        self.grid = (int(pe.shape[2]), int(pe.shape[3]))
        key_pe = pe.flatten(2)[0].T.to(image_dtype, memory_format=torch.contiguous_format, copy=True)  # (N, C)
        self.register_buffer("key_pe", key_pe)
        self.upscaling = BlockUpscaling(decoder.output_upscaling, image_dtype)

    def forward(self, keys: torch.Tensor, keys_pe: torch.Tensor, sparse: torch.Tensor, multimask: bool = False,
                window: Optional[Tuple[torch.Tensor, Tuple[int, int]]] = None,
                region: Optional[Region] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """`window`: (its positional encoding (N, C) in the image dtype, its grid) for the embedding of a window of
        the frame (`models.window`); None: the whole frame's. `region`: the cells whose logits are computed (see
        `prompt_region`); None: all."""
        key_pe, grid = (self.key_pe, self.grid) if window is None else window
        decoder = self.decoder
        chosen = list(range(2, 1 + decoder.num_mask_tokens)) if multimask else [1]  # token rows answered
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight, sparse], dim=0)  # (T, C)
        queries = tokens
        for layer in decoder.transformer.layers:
            queries, keys, keys_pe = two_way_layer(layer, queries, keys, keys_pe, tokens, key_pe)
        read = [0, *chosen]  # the IoU token and the answered mask tokens: all the final attention feeds
        final = decoder.transformer.final_attn_token_to_image
        queries = queries[read]
        queries = decoder.transformer.norm_final_attn(queries + token_to_image(final, queries + tokens[read], keys_pe, keys))
        hyper = torch.stack([decoder.output_hypernetworks_mlps[t - 1](queries[i + 1]) for i, t in enumerate(chosen)])
        iou = decoder.iou_prediction_head(queries[0])[[t - 1 for t in chosen]]
        return self.upscaling(keys, hyper, grid, region).float(), iou


CoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


class PreparedDecoder:
    """Callable like `SamModel.decode`: (embedding, points=, boxes=, masks=, multimask_output=) -> (logits, iou).

    `single` runs the single-mask answers: the torch `core` unless replaced (the onnxruntime runtimes set it to the
    core's ONNX export); multimask requests always take the torch core. `image_dtype` is the image side's arithmetic
    (`DecoderCore`); embeddings in and logits out stay float32."""

    def __init__(self, net: SamModel, image_dtype: torch.dtype = torch.float32) -> None:
        self.net = net
        self.core = DecoderCore(net, image_dtype).eval()
        self.dtype = image_dtype
        self.single: CoreFn = self.core
        self.frame = int(net.prompt_encoder.input_image_size[0])  # the prompts' frame, px
        with torch.inference_mode():
            self.pe = net.prompt_encoder.get_dense_pe()  # (1, C, h, w) float32: the image side is formed in it
        self._recent: "OrderedDict[int, Tuple[Any, ImageSide]]" = OrderedDict()

    def _key_pe(self, window: Optional[Window]) -> torch.Tensor:
        """(N, C) positional encoding of the frame's grid, or of a window's cells."""
        pe = self.pe if window is None else window.cells(self.pe)
        return pe.flatten(2)[0].T

    def _image_tokens(self, embedding: torch.Tensor, dense: torch.Tensor, window: Optional[Window]) -> ImageSide:
        keys = (embedding + dense)[0].flatten(1).T.contiguous()
        key_pe = self._key_pe(window)
        window_pe = None if window is None else key_pe.to(self.dtype).contiguous()
        return ImageSide(keys.to(self.dtype), (keys + key_pe).to(self.dtype), window_pe)

    def image_side(self, embedding: torch.Tensor, window: Optional[Window] = None) -> ImageSide:
        """The image side of `embedding` (1, C, h, w; of `window` when given) without a mask prompt, computed once
        while it stays recent (an embedding always comes with the same window)."""
        entry = self._recent.get(id(embedding))
        if entry is not None and entry[0]() is embedding:
            self._recent.move_to_end(id(embedding))
            return entry[1]
        no_mask = self.net.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        side = self._image_tokens(embedding, no_mask, window)
        self._recent[id(embedding)] = (weakref.ref(embedding), side)
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        return side

    @torch.inference_mode()
    def __call__(
        self,
        embedding: torch.Tensor,
        points: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        boxes: Optional[torch.Tensor] = None,
        masks: Optional[torch.Tensor] = None,
        multimask_output: bool = False,
        window: Optional[Window] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if embedding.shape[0] != 1:
            return self.net.decode(embedding, points=points, boxes=boxes, masks=masks,
                                   multimask_output=multimask_output, window=window)
        sparse, dense = self.net.prompt_encoder(points=points, boxes=boxes, masks=masks)
        if masks is None:
            side = self.image_side(embedding, window)
        else:
            side = self._image_tokens(embedding, dense if window is None else window.cells(dense), window)
        grid = (int(embedding.shape[-2]), int(embedding.shape[-1]))
        region = prompt_region(self.frame, grid, boxes, points, masks, window)
        if window is not None:  # the core's own grid is the frame's (the ONNX export's too)
            low_res, iou = self.core(side.keys, side.keys_pe, sparse[0], multimask_output, (side.window_pe, grid), region)
        elif multimask_output or self.single is self.core:
            low_res, iou = self.core(side.keys, side.keys_pe, sparse[0], multimask_output, region=region)
        else:  # an ONNX export of the core: every cell
            low_res, iou = self.single(side.keys, side.keys_pe, sparse[0])
        return low_res[None], iou[None]
