"""Refinement on top of a `SliceEngine` (same encoder, embedding cache and token pausing): a 2D slice from any
mix of box, include/exclude points and the previous mask; a 3D volume by mask-prompted propagation; and clicks on a
volume that correct their slice and propagate the correction until it dies out.

Mask-prompted propagation (`propagate`): the middle slice of the 3D box takes the box; every next slice takes the
previous slice's mask as dense prompt together with that mask's box (+3 px in the frame, as CVPR24). It stops
where the object ends (the prediction comes back empty), or at the box's end slices. The CVPR24 reference
propagation (`SliceEngine.propagate`) stays what `litemedsam` runs.

A decode without clicks (a box alone, or a box with a mask: every propagation step) averages the fine-tuned
decoder's logits with those of LiteMedSAM's own decoder for the same box (`box_decoder`, trained on boxes alone;
same embedding): the pair beat either alone on the training cases, on boxes and in propagation (refine/README.md,
*Two decoders*). A decode with clicks is the fine-tuned decoder's alone: the other never learnt them."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..api import STAGES
from ..engines.slice_engine import SliceEngine, SliceResult, VolumeResult, frame_box_from_mask
from ..evaluation.metrics import dice
from ..models.base import Frame
from ..prompts import Box, Box3D, Point
from ..runtime.device import synchronize
from ..timing import ms_since
from .data import to_frame
from .focus import RULE_2D, RULE_3D, ClickRule, local_edit
from .prompting import mask_prompt

DIES_OUT_DICE = 0.97  # a re-propagated slice this close to the previous result ends the correction's spread
BOX_DECODER_SHARE = 0.5  # LiteMedSAM's decoder's share of the logits of a decode without clicks


Decoder = Callable[..., Tuple[Any, Any]]


def _frame_points(points: Sequence[Point], frame: Frame) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixel-index clicks -> frame coordinates (pixel centres map to pixel centres) and labels (1 include, 0 exclude)."""
    scale = frame.size / max(frame.height, frame.width)
    coords = torch.tensor([[[(p.x + 0.5) * scale - 0.5, (p.y + 0.5) * scale - 0.5] for p in points]], dtype=torch.float32)
    labels = torch.tensor([[1.0 if p.positive else 0.0 for p in points]])
    return coords, labels


class RefineEngine:
    """Decodes with box + points + mask prompts through `slices`' net, adapter, encoder and cache."""

    def __init__(self, slices: SliceEngine, box_decoder: Optional[Decoder] = None, rule: ClickRule = RULE_2D,
                 rule_3d: ClickRule = RULE_3D) -> None:
        self.slices = slices
        self.box_decoder = box_decoder  # LiteMedSAM's own, called like `SamModel.decode`; None: the fine-tuned alone
        # how far a click's edit reaches on a slice and in a volume (refine/focus.py); in 3D a click the decoder
        # does not obey sets its spot only on its slice, after the spreading, which would carry it to the
        # neighbours (on the training cases a spread spot harmed 1 of 9 objects, the unspread one none)
        self.rule, self.rule_3d = rule, rule_3d

    def _decode(
        self,
        embedding: torch.Tensor,
        frame: Frame,
        frame_box: Optional[np.ndarray],
        points: Sequence[Point],
        previous: Optional[np.ndarray],
        timings: Dict[str, float],
    ) -> Tuple[np.ndarray, float]:
        device = self.slices.device
        start = time.perf_counter()
        boxes = None if frame_box is None else torch.as_tensor(frame_box, dtype=torch.float32, device=device).reshape(1, 1, 4)
        prompt_points = None
        if points:
            coords, labels = _frame_points(points, frame)
            prompt_points = (coords.to(device), labels.to(device))
        masks = None
        if previous is not None:
            masks = mask_prompt(torch.from_numpy(to_frame(previous, frame))[None]).to(device)
        with torch.inference_mode():  # the runtime's decoders (the prepared ones unless torch-exact)
            low_res, iou = self.slices.decoder(embedding, points=prompt_points, boxes=boxes, masks=masks)
            if self.box_decoder is not None and boxes is not None and not points:
                box_only, _ = self.box_decoder(embedding, boxes=boxes)
                low_res = (1.0 - BOX_DECODER_SHARE) * low_res + BOX_DECODER_SHARE * box_only
        synchronize(device)
        timings["decode"] += ms_since(start)
        start = time.perf_counter()
        mask = self.slices.adapter.postprocess(low_res, frame)
        timings["postprocess"] += ms_since(start)
        return mask, float(iou[0, 0])

    def warm_up(self) -> None:
        """The slice engine's warm-up for every path a refinement prompt takes: one untimed encode of a blank
        slice, a click decode (box, include point and mask prompt, fine-tuned decoder) and a click-free decode
        (both decoders), caching nothing; on a GPU a first click then pays no kernel loading either."""
        embedding, frame = self.slices.blank_embedding()
        size = self.slices.adapter.size
        frame_box = np.array([[0.0, 0.0, 8.0, 8.0]], dtype=np.float32)
        timings = dict.fromkeys(STAGES, 0.0)
        self._decode(embedding, frame, frame_box, [Point(4, 4, positive=True)], np.ones((size, size), bool), timings)
        self._decode(embedding, frame, frame_box, (), None, timings)

    # -- 2D ------------------------------------------------------------------------------------------------------
    def segment(
        self, key: Hashable, slice_u8: np.ndarray, box: Optional[Box], points: Sequence[Point], previous: Optional[np.ndarray]
    ) -> SliceResult:
        timings = dict.fromkeys(STAGES, 0.0)
        embedding, frame, encoded, paused = self.slices._embedding(key, slice_u8, timings)
        frame_box = None if box is None else frame.box_to_frame(box.x0, box.y0, box.x1, box.y1)
        if previous is not None and not previous.any():
            previous = None  # an empty previous mask says nothing; the prompt encoder's "no mask" is what it means
        mask, iou = self._decode(embedding, frame, frame_box, points, previous, timings)
        if previous is not None and points:
            mask = local_edit(previous, mask, points, self.rule)
        return SliceResult(mask, iou, timings, encoded, paused)

    # -- 3D ------------------------------------------------------------------------------------------------------
    def _slice(self, key_prefix: Hashable, volume_u8: np.ndarray, z: int, result: VolumeResult):
        embedding, frame, encoded, paused = self.slices._embedding((key_prefix, z), volume_u8[z], result.timings)
        result.encoder_calls += int(encoded)
        return embedding, frame, paused

    def _follow(
        self, key_prefix: Hashable, volume_u8: np.ndarray, result: VolumeResult, start: int, stop: int, step: int,
        compare: Optional[np.ndarray], paused: List[List[float]],
    ) -> None:
        """From slice `start` (already in result.mask) towards `stop` (inclusive): previous mask + its box in, until
        the prediction is empty, or (when `compare`, the result before a click, is given) until it agrees with it."""
        previous = result.mask[start]
        for z in range(start + step, stop + step, step):
            if not previous.any():
                break
            embedding, frame, p = self._slice(key_prefix, volume_u8, z, result)
            if p is not None:
                paused.append(p)
            mask, _ = self._decode(embedding, frame, frame_box_from_mask(previous, frame), (), previous, result.timings)
            if compare is not None and dice(mask, compare[z]) >= DIES_OUT_DICE:
                break
            result.mask[z] = mask
            previous = mask
        return None

    def propagate(self, key_prefix: Hashable, volume_u8: np.ndarray, box: Box3D) -> VolumeResult:
        """Mask-prompted middle-out propagation over the box's slices (see the module documentation)."""
        z0, z1 = int(box.z0), int(box.z1)
        z_mid = int((z1 - z0) / 2 + z0)
        result = VolumeResult(mask=np.zeros(volume_u8.shape[:3], dtype=bool), iou=0.0, z_range=(z0, z1))
        paused: List[List[float]] = []
        embedding, frame, p = self._slice(key_prefix, volume_u8, z_mid, result)
        if p is not None:
            paused.append(p)
        result.mask[z_mid], result.iou = self._decode(
            embedding, frame, frame.box_to_frame(box.x0, box.y0, box.x1, box.y1), (), None, result.timings
        )
        self._follow(key_prefix, volume_u8, result, z_mid, z1, 1, None, paused)
        self._follow(key_prefix, volume_u8, result, z_mid, z0, -1, None, paused)
        if paused:
            result.paused = [float(v) for v in np.mean(paused, axis=0)]
        return result

    def refine(
        self, key_prefix: Hashable, volume_u8: np.ndarray, box: Optional[Box3D], points: Sequence[Point],
        previous: Optional[np.ndarray],
    ) -> VolumeResult:
        """Start from `previous` (else the box's propagation); each clicked slice (in z order) is decoded from its
        clicks, the box (when it covers the slice) and its previous mask, and the change spreads to the
        neighbouring slices (previous mask + box in) until the new result agrees with the old one. Of the whole
        change, only what the clicks' focus rule keeps stays (`focus.local_edit`)."""
        if previous is not None:
            result = VolumeResult(mask=previous.astype(bool).copy(), iou=0.0)
        elif box is not None:
            result = self.propagate(key_prefix, volume_u8, box)
        else:
            result = VolumeResult(mask=np.zeros(volume_u8.shape[:3], dtype=bool), iou=0.0)
        lo, hi = (int(box.z0), int(box.z1)) if box is not None else (0, volume_u8.shape[0] - 1)
        paused: List[List[float]] = []
        by_slice: Dict[int, List[Point]] = {}
        for point in points:
            by_slice.setdefault(int(round(point.z)), []).append(point)
        start = result.mask.copy()
        for z in sorted(by_slice):
            before = result.mask.copy()
            embedding, frame, p = self._slice(key_prefix, volume_u8, z, result)
            if p is not None:
                paused.append(p)
            frame_box = None if box is None else frame.box_to_frame(box.x0, box.y0, box.x1, box.y1)
            prior = before[z] if before[z].any() else None
            refined, result.iou = self._decode(embedding, frame, frame_box, by_slice[z], prior, result.timings)
            result.mask[z] = refined if prior is None else local_edit(prior, refined, by_slice[z], replace(self.rule_3d, follow=0))
            if np.array_equal(result.mask[z], before[z]):
                continue  # no click on this slice was obeyed: nothing to spread
            self._follow(key_prefix, volume_u8, result, z, hi, 1, before, paused)
            self._follow(key_prefix, volume_u8, result, z, lo, -1, before, paused)
        if points:  # in 3D too, a click edits the object where it lands: changes not connected to a click go
            result.mask = local_edit(start, result.mask, points, self.rule_3d)
        zs = np.nonzero(result.mask.reshape(result.mask.shape[0], -1).any(axis=1))[0]
        result.z_range = (int(zs.min()), int(zs.max())) if len(zs) else None
        if paused:
            result.paused = [float(v) for v in np.mean(paused, axis=0)]
        return result
