"""Box prompts on 2D slices (LiteMedSAM, MedficientSAM): cached per-slice encoding, decoding, and the CVPR24
middle-out propagation that turns a 3D box into a volume mask."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Hashable, List, Optional, Tuple

import cv2
import numpy as np
import torch

from ..api import STAGES
from ..models.base import Frame, SamModel, SliceAdapter
from ..models.window import Window
from ..prompts import Box, Box3D
from ..runtime.device import synchronize
from ..timing import ms_since
from .cache import EmbeddingCache

PROPAGATION_BOX_MARGIN = 3  # px in the model frame added around the previous slice's mask (CVPR24 protocol)


@dataclass
class SliceResult:
    mask: np.ndarray  # (H, W) bool
    iou: float
    timings: Dict[str, float]
    encoded: bool  # False when the embedding came from the cache
    paused: Optional[List[float]] = None  # fraction of tokens paused per encoder block (token-paused encoder only)


@dataclass
class VolumeResult:
    mask: np.ndarray  # (Z, Y, X) bool
    iou: float
    timings: Dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    encoder_calls: int = 0
    z_range: Optional[Tuple[int, int]] = None  # slices the result may differ from zero in, inclusive
    paused: Optional[List[float]] = None  # per encoder block, mean over the slices used (token-paused encoder only)


def to_rgb(slice_u8: np.ndarray) -> np.ndarray:
    """Grey (H, W) -> (H, W, 3); RGB passes through."""
    return slice_u8 if slice_u8.ndim == 3 else np.repeat(slice_u8[:, :, None], 3, axis=2)


def frame_box_from_mask(mask: np.ndarray, frame: Frame, margin: int = PROPAGATION_BOX_MARGIN) -> Optional[np.ndarray]:
    """Bounding box of `mask` after resizing it into the model frame, enlarged by `margin` px; None if empty."""
    resized = cv2.resize(mask.astype(np.uint8), (frame.resized_width, frame.resized_height), interpolation=cv2.INTER_AREA)
    ys, xs = np.nonzero(resized)
    if len(xs) == 0:
        return None
    x0, x1 = max(0, xs.min() - margin), min(frame.size, xs.max() + margin)
    y0, y1 = max(0, ys.min() - margin), min(frame.size, ys.max() + margin)
    return np.array([[x0, y0, x1, y1]], dtype=np.float32)


class SliceEngine:
    """Runs one 2D family (`SamModel` + its `SliceAdapter`) on uint8 slices with an embedding cache.

    `encoder` is what turns a preprocessed slice into an embedding: `net.encode`, a runtime's encoder, or a
    token-paused encoder (which reports `last_stats`); `encoder_tag` tells cached embeddings of different encoders
    apart. `decoder` is called like `net.decode` (a runtime may prepare the image side once per embedding)."""

    def __init__(self, net: SamModel, adapter: SliceAdapter, device: torch.device, cache: EmbeddingCache) -> None:
        self.net = net
        self.adapter = adapter
        self.device = device
        self.cache = cache
        self.encoder: Callable[[torch.Tensor], torch.Tensor] = net.encode
        self.encoder_tag: Hashable = None
        self.decoder: Callable[..., Tuple[torch.Tensor, torch.Tensor]] = net.decode
        self.encode_batch = 1
        self.crop: Optional[float] = None  # encode only a window of `crop` x the box's side around each box
        self.stride = adapter.size // net.prompt_encoder.image_embedding_size[0]  # frame px per embedding cell

    def _window(self, frame_box: np.ndarray) -> Optional[Window]:
        """The window to encode for a frame-space box in crop mode; None: the whole frame."""
        if self.crop is None:
            return None
        window = Window.around(frame_box[0], self.crop, self.adapter.size, self.stride)
        return None if window.covers(self.adapter.size) else window

    def _frame(self, slice_u8: np.ndarray) -> Frame:
        return Frame.fit(slice_u8.shape[0], slice_u8.shape[1], self.adapter.size)

    def _embedding(self, key: Hashable, slice_u8: np.ndarray, timings: Dict[str, float],
                   window: Optional[Window] = None) -> Tuple[torch.Tensor, Frame, bool, Optional[List[float]]]:
        if window is not None:
            key = (key, window)
        cached = self.cache.get((self.encoder_tag, key))
        if cached is not None:
            return cached[0], cached[1], False, cached[2]
        embedding, frame, paused = self._encode([key], [slice_u8], timings, window)[0]
        return embedding, frame, True, paused

    def _encode(self, keys: List[Hashable], slices: List[np.ndarray], timings: Dict[str, float],
                window: Optional[Window] = None) -> List[Tuple[torch.Tensor, Frame, Optional[List[float]]]]:
        """Encode `slices` (only `window` of their frames, when given) in one encoder call and cache each under its
        key; returns the (embedding, frame, paused) entries. `paused` (per-block paused fractions) comes from an
        encoder that reports them, one slice a call."""
        start = time.perf_counter()
        prepared = [self.adapter.preprocess(to_rgb(s)) for s in slices]
        batch = torch.cat([tensor for tensor, _ in prepared])
        batch = (batch if window is None else window.pixels(batch).contiguous()).to(self.device)
        timings["preprocess"] += ms_since(start)
        start = time.perf_counter()
        embeddings = self.encoder(batch)
        synchronize(self.device)
        timings["encode"] += ms_since(start)
        stats = getattr(self.encoder, "last_stats", None)
        paused = None if stats is None or len(slices) > 1 else stats.paused_fraction()
        single = len(slices) == 1  # a slice of a batch is copied, so that evicting it frees its memory
        entries = [(embeddings if single else embedding.clone(), frame, paused)
                   for (_, frame), embedding in zip(prepared, embeddings.split(1))]
        for key, entry in zip(keys, entries):
            self.cache.put((self.encoder_tag, key), entry)
        return entries

    def encode_ahead(self, keys: List[Hashable], slices: List[np.ndarray], timings: Dict[str, float]) -> int:
        """Encode the uncached ones of `slices` (cache keys `keys`) in one encoder call and cache them; returns how
        many it encoded (none if fewer than two are missing: the caller's own encode serves one)."""
        todo = [(k, s) for k, s in zip(keys, slices) if (self.encoder_tag, k) not in self.cache]
        if len(todo) < 2:
            return 0
        self._encode([k for k, _ in todo], [s for _, s in todo], timings)
        return len(todo)

    def blank_embedding(self) -> Tuple[torch.Tensor, Frame]:
        """An untimed, uncached encode of a blank slice, and its frame (for warm-ups)."""
        tensor, frame = self.adapter.preprocess(np.zeros((self.adapter.size, self.adapter.size, 3), np.uint8))
        return self.encoder(tensor.to(self.device)), frame

    def warm_up(self) -> None:
        """One untimed encode + decode of a blank slice, caching nothing: on a GPU the first kernels pay the
        libraries' start-up (handles, kernel loading), which should not land on the user's first prompt."""
        embedding, _ = self.blank_embedding()
        box = torch.tensor([[[0.0, 0.0, 8.0, 8.0]]], device=self.device)
        self.decoder(embedding, boxes=box)
        synchronize(self.device)

    def ensure_embedding(self, key: Hashable, slice_u8: np.ndarray) -> bool:
        """Encode and cache the slice under `key` unless it is cached (background prefetch); True if it encoded."""
        if (self.encoder_tag, key) in self.cache:
            return False
        return self._embedding(key, slice_u8, dict.fromkeys(STAGES, 0.0))[2]

    def _decode(self, embedding: torch.Tensor, frame: Frame, frame_box: np.ndarray, timings: Dict[str, float],
                window: Optional[Window] = None) -> Tuple[np.ndarray, float]:
        start = time.perf_counter()
        boxes = torch.as_tensor(frame_box, dtype=torch.float32, device=self.device)[:, None, :]
        if window is None:
            low_res, iou = self.decoder(embedding, boxes=boxes)
        else:
            low_res, iou = self.decoder(embedding, boxes=boxes, window=window)
            low_res = window.paste(low_res, frame.size)
        synchronize(self.device)
        timings["decode"] += ms_since(start)
        start = time.perf_counter()
        mask = self.adapter.postprocess(low_res, frame)
        timings["postprocess"] += ms_since(start)
        return mask, float(iou[0, 0])

    def segment(self, key: Hashable, slice_u8: np.ndarray, box: Box) -> SliceResult:
        """Segment one slice from a pixel-space box (inclusive indices)."""
        timings = dict.fromkeys(STAGES, 0.0)
        frame_box = self._frame(slice_u8).box_to_frame(box.x0, box.y0, box.x1, box.y1)
        window = self._window(frame_box)
        embedding, frame, encoded, paused = self._embedding(key, slice_u8, timings, window)
        mask, iou = self._decode(embedding, frame, frame_box, timings, window)
        return SliceResult(mask, iou, timings, encoded, paused)

    def propagate(self, key_prefix: Hashable, volume_u8: np.ndarray, box: Box3D,
                  progress: Optional[Callable[[int, int], None]] = None) -> VolumeResult:
        """CVPR24 middle-out propagation: the middle slice takes the 3D box's 2D box; every other slice takes the
        box of its neighbour's mask (enlarged by 3 px in the model frame), or the middle box if that mask is empty.

        `progress(done, total)` is called after each slice; an exception it raises stops the propagation."""
        z0, z1 = int(box.z0), int(box.z1)
        z_mid = int((z1 - z0) / 2 + z0)
        result = VolumeResult(mask=np.zeros(volume_u8.shape[:3], dtype=bool), iou=0.0)
        paused_per_slice: List[List[float]] = []
        done = 0
        for order in (range(z_mid, z1 + 1), range(z_mid - 1, z0 - 1, -1)):
            previous: Optional[np.ndarray] = None if order.start == z_mid else result.mask[z_mid]
            for i, z in enumerate(order):
                if self.encode_batch > 1 and self.crop is None:  # this slice and the next ones, in one encoder call
                    ahead = order[i:i + self.encode_batch]
                    result.encoder_calls += self.encode_ahead([(key_prefix, a) for a in ahead],
                                                              [volume_u8[a] for a in ahead], result.timings)
                frame = self._frame(volume_u8[z])
                frame_box = None if previous is None else frame_box_from_mask(previous, frame)
                if frame_box is None:
                    frame_box = frame.box_to_frame(box.x0, box.y0, box.x1, box.y1)
                window = self._window(frame_box)
                embedding, frame, encoded, paused = self._embedding((key_prefix, z), volume_u8[z], result.timings, window)
                result.encoder_calls += int(encoded)
                if paused is not None:
                    paused_per_slice.append(paused)
                mask, iou = self._decode(embedding, frame, frame_box, result.timings, window)
                result.mask[z] = mask
                done += 1
                if progress is not None:
                    progress(done, z1 - z0 + 1)
                if z == z_mid:
                    result.iou = iou
                previous = mask
        if paused_per_slice:
            result.paused = [float(v) for v in np.mean(paused_per_slice, axis=0)]
        return result
