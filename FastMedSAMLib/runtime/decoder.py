"""SAM's 2D mask decoder with the image-only work done once per embedding.

A box click on a cached slice runs the prompt encoder and the mask decoder. Part of the decoder depends only on
the image: the dense positional encoding (constant), the image tokens plus the no-mask embedding, and the keys and
values of the first token-to-image attention (0.55 of its 3.6 GFLOPs). `PreparedDecoder` computes those once per
embedding (kept for the few most recent embeddings), then per prompt runs only the rest, and of the four mask
tokens only the one a single-mask answer uses (one hypernetwork MLP, one row of the mask product).

Same operations in the same order as `MaskDecoder`, its attentions through PyTorch's fused scaled-dot-product
kernel; the results equal `SamModel.decode` up to float rounding (tested). Points, mask prompts or multimask
requests take the plain `SamModel.decode`.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F

from ..models.base import SamModel
from ..models.mask_decoder import Attention

RECENT = 4  # embeddings whose image side is kept (the viewed slice and its neighbours)


@dataclass
class ImageSide:
    """What the decoder needs of one (1, C, h, w) embedding, whatever the prompt."""

    keys: torch.Tensor  # (1, N, C) image tokens + no-mask embedding
    k0: torch.Tensor  # (1, heads, N, d) first token-to-image attention keys
    v0: torch.Tensor  # (1, heads, N, d) and values
    grid: Tuple[int, ...]


def _attend(attn: Attention, q: torch.Tensor, k: Optional[torch.Tensor], v: Optional[torch.Tensor],
            k_heads: Optional[torch.Tensor] = None, v_heads: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`Attention.forward` through PyTorch's fused scaled-dot-product kernel (no materialised score matrix, fewer
    layout copies); `k_heads` / `v_heads`: key/value projections already done."""
    q = attn._heads(attn.q_proj(q))
    k = attn._heads(attn.k_proj(k)) if k_heads is None else k_heads
    v = attn._heads(attn.v_proj(v)) if v_heads is None else v_heads
    out = F.scaled_dot_product_attention(q, k, v)
    b, h, n, d = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


def _two_way_layer(layer: Any, queries: torch.Tensor, keys: torch.Tensor, tokens: torch.Tensor, key_pe: torch.Tensor,
                   side: Optional[ImageSide] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """`TwoWayAttentionBlock.forward` (same operations) with fused attention; for the first layer `side` holds
    the image-side keys/values of its token-to-image attention."""
    if layer.skip_first_layer_pe:
        queries = _attend(layer.self_attn, queries, queries, queries)
    else:
        q = queries + tokens
        queries = queries + _attend(layer.self_attn, q, q, queries)
    queries = layer.norm1(queries)
    q = queries + tokens
    if side is not None:
        cross = _attend(layer.cross_attn_token_to_image, q, None, None, side.k0, side.v0)
    else:
        cross = _attend(layer.cross_attn_token_to_image, q, keys + key_pe, keys)
    queries = layer.norm2(queries + cross)
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + tokens
    keys = layer.norm4(keys + _attend(layer.cross_attn_image_to_token, keys + key_pe, q, queries))
    return queries, keys


class PreparedDecoder:
    """Callable like `SamModel.decode`: (embedding, points=, boxes=, masks=, multimask_output=) -> (logits, iou)."""

    def __init__(self, net: SamModel) -> None:
        self.net = net
        decoder = net.mask_decoder
        self.first = decoder.transformer.layers[0]
        if not self.first.skip_first_layer_pe:
            raise ValueError("PreparedDecoder expects SAM's two-way transformer (first layer without query PE)")
        with torch.inference_mode():
            self.key_pe = net.prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1)
        self._recent: "OrderedDict[int, Tuple[Any, ImageSide]]" = OrderedDict()

    @torch.inference_mode()
    def image_side(self, embedding: torch.Tensor) -> ImageSide:
        """The prompt-independent part for `embedding` (1, C, h, w), computed once while it stays recent."""
        entry = self._recent.get(id(embedding))
        if entry is not None and entry[0]() is embedding:
            self._recent.move_to_end(id(embedding))
            return entry[1]
        dense = self.net.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = embedding + dense.expand(embedding.shape[0], -1, *embedding.shape[2:])
        keys = src.flatten(2).permute(0, 2, 1)
        attn = self.first.cross_attn_token_to_image
        side = ImageSide(keys, attn._heads(attn.k_proj(keys + self.key_pe)), attn._heads(attn.v_proj(keys)),
                         tuple(embedding.shape[2:]))
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
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if points is not None or masks is not None or boxes is None or multimask_output or embedding.shape[0] != 1:
            return self.net.decode(embedding, points=points, boxes=boxes, masks=masks, multimask_output=multimask_output)
        side = self.image_side(embedding)
        decoder = self.net.mask_decoder
        sparse, _ = self.net.prompt_encoder(boxes=boxes)
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
        transformer = decoder.transformer
        queries, keys = _two_way_layer(self.first, tokens, side.keys, tokens, self.key_pe, side)
        for layer in transformer.layers[1:]:
            queries, keys = _two_way_layer(layer, queries, keys, tokens, self.key_pe)
        q = queries + tokens
        k = keys + self.key_pe
        queries = transformer.norm_final_attn(queries + _attend(transformer.final_attn_token_to_image, q, k, keys))
        b, c = keys.shape[0], keys.shape[2]
        upscaled = decoder.output_upscaling(keys.transpose(1, 2).reshape(b, c, *side.grid))
        hyper = decoder.output_hypernetworks_mlps[0](queries[:, 1, :]).unsqueeze(1)
        grid = upscaled.shape[2:]
        low_res = (hyper @ upscaled.flatten(2)).reshape(b, 1, *grid)
        iou = decoder.iou_prediction_head(queries[:, 0, :])[:, :1]
        return low_res, iou
