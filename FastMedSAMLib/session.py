"""`Session`: the one API the CLI, the Slicer module and the server use.

It owns the image (array + geometry + the uint8 view the models see), validates prompts, routes them to the
model's engine, caches embeddings, and reports per-stage timings in milliseconds.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .api import STAGES, Prediction
from .engines.cache import EmbeddingCache
from .engines.prefetch import BackgroundThread, ModelGate, Prefetch, outward, start_prefetch
from .engines.slice_engine import SliceEngine
from .errors import ImageError, PromptError
from .io.images import Image, read_image
from .io.intensity import to_uint8
from .models import load_model, slice_adapter
from .prompts import Box, Box3D, Point, points_to_box
from .runtime.device import configure_precision, resolve_device
from .weights.registry import get_spec

ImageInput = Union[np.ndarray, str, Path, Image]


class Session:
    """Interactive segmentation of one image at a time with one model.

    >>> s = Session(model="litemedsam", device="auto")
    >>> s.set_image(volume, spacing=(0.8, 0.8, 5.0))
    >>> s.predict(box=Box3D(100, 120, 4, 180, 200, 9)).mask.shape

    `pause` in [0, 1] is the token-pausing knob of models that have pause heads (LiteMedSAM): 0 runs the plain
    encoder, higher values pause more tokens mid-encoder (faster, less exact); `set_pause` changes it at any time.

    `runtime` is how the 2D models compute (see `FastMedSAMLib.runtime`): "torch-exact" (the eager reference
    modules), "torch" (folded/fused), "onnxruntime", "onnxruntime-int8", "torch-fp16" (GPU); None takes the device's
    measured default (`runtime.default_runtime`). The 3D point models run their eager modules whatever the runtime.

    `crop` (LiteMedSAM box prompts, torch runtimes): encode only a square of `crop` x the box's longer side around
    each box, at the frame's scale, instead of the whole slice (`models/window.py`): a cold box or 3D propagation
    encodes a fraction of the tokens. Each box gets its own window embedding, so prefetched whole slices go unused.
    """

    def __init__(
        self,
        model: str = "litemedsam",
        device: Union[str, torch.device] = "auto",
        *,
        cache_mb: float = 1024,
        points_as_box: bool = False,
        weights: Optional[Path] = None,
        pause: float = 0.0,
        runtime: Optional[str] = None,
        crop: Optional[float] = None,
    ) -> None:
        from .models.window import validate_crop
        from .pause import validate_pause
        from .runtime import build_runtime, default_runtime, validate_runtime

        validate_pause(pause)  # a bad knob, crop or runtime fails before any weights load
        crop = validate_crop(crop)
        self.device = resolve_device(device)
        runtime = validate_runtime(runtime or default_runtime(self.device), self.device)
        configure_precision(self.device)
        self.spec = get_spec(model)
        self.model_name = model
        self.points_as_box = points_as_box
        self.cache = EmbeddingCache(int(cache_mb * 2**20))
        self._check_crop(crop, model, runtime)
        self.net = load_model(model, self.device, weights)
        if self.spec.dimensionality == "3D":
            from .engines.crop_engine import CropEngine

            self._engine: Union[SliceEngine, "CropEngine"] = CropEngine(self.net, self.device, self.cache)
        else:
            adapter = slice_adapter(model)
            self._engine = SliceEngine(self.net, adapter, self.device, self.cache)
            self._runtime = build_runtime(runtime, self.net, model, self.device, frame=adapter.size, weights=weights)
            self._engine.encoder, self._engine.encoder_tag = self._runtime.encoder, self._runtime.tag
            self._engine.decoder = self._runtime.decoder
            self._engine.encode_batch = self._runtime.batch
            self._engine.crop = crop
        self.crop = crop
        self._background = BackgroundThread()
        self.runtime = runtime if isinstance(self._engine, SliceEngine) else "torch-exact"
        if self._refines:  # its engine and the base model's decoder load now, not on the first prompt
            from .refine.requests import refine_engine

            refine_engine(self)
        self._warm_up()
        self._gate = ModelGate()
        self._prefetch: Optional[Prefetch] = None
        self.image: Optional[Image] = None
        self._u8: Optional[np.ndarray] = None
        self.pause = 0.0
        self._paused_encoder = None  # built on the first knob > 0, then only its threshold moves
        self.set_pause(pause)

    def _check_crop(self, crop: Optional[float], model: str, runtime: str) -> None:
        """A crop needs a 2D box model whose encoder takes any input size, run by torch (not an ONNX export)."""
        from .errors import RuntimeChoiceError

        if crop is None:
            return
        if self.spec.family != "litemedsam" or tuple(self.spec.prompts) != ("box",):
            raise RuntimeChoiceError(f"crop is for LiteMedSAM's box prompts (its TinyViT encodes any window size); "
                                     f"model {model!r} encodes whole frames: use crop=None")
        if runtime.startswith("onnxruntime"):
            raise RuntimeChoiceError(f"crop needs a torch runtime (the ONNX encoder is exported for the whole frame); "
                                     f"got runtime {runtime!r}")

    def _warm_up(self) -> None:
        """On a GPU, run the current encoder once in this thread and once on the prefetch thread (cuDNN builds its
        execution plans per thread), so that neither a first prompt nor a first prefetch slice pays for it. No
        prefetch may be running (the warm-up would queue behind it)."""
        if self.device.type == "cuda" and isinstance(self._engine, SliceEngine):
            warm_up = self._refine_engine.warm_up if self._refines else self._engine.warm_up
            warm_up()
            self._background.submit(warm_up).wait()

    # -- token pausing ---------------------------------------------------------------------------------------
    def set_pause(self, pause: float) -> None:
        """Set the token-pausing knob (0 = the plain model). Embeddings cached under another value stay cached.

        Raises PauseError for a value outside [0, 1] or a model without pause heads (then nothing changes)."""
        from .pause import PauseError, paused_encoder, validate_pause

        value = validate_pause(pause)
        if value == self.pause:
            return
        first_paused = value > 0 and self._paused_encoder is None
        if not isinstance(self._engine, SliceEngine):
            raise PauseError(f"token pausing is not available for the 3D point model {self.model_name!r}; use pause=0")
        with self._gate.prompt():  # never under a running prefetch's encode
            if value == 0.0:
                self._engine.encoder, self._engine.encoder_tag = self._runtime.encoder, self._runtime.tag
                self._engine.encode_batch = self._runtime.batch
            else:
                if self._paused_encoder is None:
                    self._paused_encoder = paused_encoder(self.net, self.model_name, value)
                else:
                    self._paused_encoder.set_pause(value)
                self._engine.encoder, self._engine.encoder_tag = self._paused_encoder, ("pause", value)
                self._engine.encode_batch = 1  # its statistics are per slice
            self.pause = value
        if first_paused:  # a new encoder: its convolutions need their own plans on a GPU
            self.cancel_prefetch()
            self._warm_up()

    # -- image -----------------------------------------------------------------------------------------------
    def set_image(
        self,
        image: ImageInput,
        spacing: Optional[Sequence[float]] = None,
        *,
        origin: Optional[Sequence[float]] = None,
        direction: Optional[np.ndarray] = None,
        modality: Optional[str] = None,
        window: Optional[Tuple[float, float]] = None,
    ) -> None:
        """Set the image to segment: a (Z,Y,X) volume, a (Y,X) or (Y,X,3) image, a path, or an `Image`.

        `window` (lo, hi) overrides the intensity window; CT in HU otherwise gets [-160, 240]."""
        if isinstance(image, (str, Path)):
            image = read_image(image)
        elif isinstance(image, np.ndarray):
            image = Image.from_array(image, spacing=spacing, origin=origin, direction=direction, modality=modality)
        elif not isinstance(image, Image):
            raise ImageError(f"set_image takes an array, a path or an Image, not {type(image).__name__}")
        self.cancel_prefetch()
        self._u8 = to_uint8(image, window=window)
        self.image = image
        self._image_key = (image.identity, window)

    @property
    def _refines(self) -> bool:
        """A 2D model that also takes points and the previous mask: a refinement model (litemedsam-refine)."""
        return self.spec.dimensionality == "2D" and "point" in self.spec.prompts

    @property
    def is_volume(self) -> bool:
        return self._u8 is not None and self.image is not None and self.image.is_volume

    # -- prediction ------------------------------------------------------------------------------------------
    def predict(
        self,
        box: Optional[Union[Box, Box3D]] = None,
        points: Optional[Sequence[Point]] = None,
        mask: Optional[np.ndarray] = None,
        *,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> Prediction:
        """Segment from a 2D box on one slice, a 3D box (propagated slice by slice) or points;
        refinement models (`litemedsam-refine`) also take include/exclude points and the previous mask (see
        `refine/requests.py`).

        `progress(done, total)` follows a 3D propagation slice by slice; an exception it raises stops it."""
        if self._u8 is None:
            raise PromptError("no image: call set_image() before predict()")
        start = time.perf_counter()
        with self._gate.prompt():  # a running prefetch yields before its next slice
            if self._refines:
                from .refine.requests import predict as predict_refine

                prediction = predict_refine(self, box, points, mask)
                prediction.timings["total"] = (time.perf_counter() - start) * 1000.0
                return prediction
            if "point" in self.spec.prompts:
                prediction = self._predict_points(box, points, mask)
                prediction.timings["total"] = (time.perf_counter() - start) * 1000.0
                return prediction
            box = self._box_from_prompts(box, points, mask)
            if isinstance(box, Box3D):
                prediction = self._predict_box3d(box, progress)
            else:
                prediction = self._predict_box2d(box)
        prediction.timings["total"] = (time.perf_counter() - start) * 1000.0
        return prediction

    def _box_from_prompts(
        self, box: Optional[Union[Box, Box3D]], points: Optional[Sequence[Point]], mask: Optional[np.ndarray]
    ) -> Union[Box, Box3D]:
        prompts = self.spec.prompts
        if mask is not None and "mask" not in prompts:
            raise PromptError(f"model {self.model_name!r} does not take a mask prompt (it takes: {', '.join(sorted(prompts))})")
        if points:
            if box is not None:
                raise PromptError(f"model {self.model_name!r} takes a box only; got a box and points")
            if not self.points_as_box:
                raise PromptError(
                    f"model {self.model_name!r} is box-only (trained with box prompts; a point gives no usable mask). "
                    "Give a box, or create the Session with points_as_box=True to use the points' bounding box."
                )
            for p in points:
                p.check_inside(self._shape_zyx())
            box = points_to_box(points)
        if box is None:
            raise PromptError(f"no prompt: model {self.model_name!r} needs a box")
        return box

    def _shape_zyx(self) -> Tuple[int, int, int]:
        u8 = self._u8
        return (u8.shape[0], u8.shape[1], u8.shape[2]) if self.is_volume else (1, u8.shape[0], u8.shape[1])

    def _predict_box2d(self, box: Box) -> Prediction:
        depth, height, width = self._shape_zyx()
        if self.is_volume:
            if box.z is None:
                raise PromptError(f"a 2D box on a volume needs its slice: Box(..., z=k) with 0 <= k < {depth}")
            z = int(box.z)
            if z != box.z or not 0 <= z < depth:
                raise PromptError(f"box slice z={box.z} is not a slice index of this volume (0..{depth - 1})")
            slice_u8 = self._u8[z]
        else:
            if box.z not in (None, 0):
                raise PromptError(f"box slice z={box.z} given for a 2D image (use z=None)")
            z, slice_u8 = 0, self._u8
        clipped = box.clipped(height, width)
        result = self._engine.segment((self._image_key, z), slice_u8, clipped)
        return Prediction(
            mask=result.mask,
            timings=dict(result.timings),
            slice_index=z if self.is_volume else None,
            encoder_calls=int(result.encoded),
            iou=result.iou,
            prompt={"box": clipped},
            paused_by_block=result.paused,
        )

    def _predict_box3d(self, box: Box3D, progress: Optional[Callable[[int, int], None]] = None) -> Prediction:
        if not self.is_volume:
            raise PromptError("a 3D box needs a volume; this image is 2D (use Box)")
        depth, height, width = self._shape_zyx()
        if box.z1 < 0 or box.z0 > depth - 1:
            raise PromptError(f"3D box slices {box.z0}..{box.z1} lie outside the volume (0..{depth - 1})")
        plane = Box(box.x0, box.y0, box.x1, box.y1).clipped(height, width)
        clipped = Box3D(plane.x0, plane.y0, max(int(box.z0), 0), plane.x1, plane.y1, min(int(box.z1), depth - 1))
        result = self._engine.propagate(self._image_key, self._u8, clipped, progress)
        return Prediction(
            mask=result.mask,
            timings=dict(result.timings),
            z_range=(clipped.z0, clipped.z1),
            encoder_calls=result.encoder_calls,
            iou=result.iou,
            prompt={"box3d": clipped},
            paused_by_block=result.paused,
        )

    def _predict_points(
        self, box: Optional[Union[Box, Box3D]], points: Optional[Sequence[Point]], mask: Optional[np.ndarray]
    ) -> Prediction:
        """3D point models: clicks (and optionally the previous mask) -> a volume mask through a 128³ crop."""
        if box is not None:
            raise PromptError(f"model {self.model_name!r} takes point prompts, not boxes")
        if not points:
            raise PromptError(f"no prompt: model {self.model_name!r} needs at least one point")
        if not self.is_volume:
            raise PromptError(f"model {self.model_name!r} is a 3D model and needs a volume, not a 2D image")
        for p in points:
            if p.z is None:
                raise PromptError(f"point ({p.x}, {p.y}) has no slice index z; 3D models need (x, y, z)")
            p.check_inside(self._shape_zyx())
        if mask is not None and mask.shape != self._u8.shape:
            raise PromptError(f"previous mask has shape {mask.shape}; the volume has {self._u8.shape}")
        result = self._engine.segment(self.image, list(points), self._image_key, previous=mask)
        return Prediction(
            mask=result.mask,
            timings=dict(result.timings),
            z_range=result.z_range,
            encoder_calls=result.encoder_calls,
            iou=result.iou,
            prompt={"points": list(points)},
        )

    # -- prefetch --------------------------------------------------------------------------------------------
    def prefetch(self, slices: Optional[Sequence[int]] = None, center: Optional[int] = None) -> Prefetch:
        """Encode slices of the current volume in the background: `center` (the viewed slice; default the middle)
        first, then outward; `slices` defaults to all. Replaces a running prefetch. Any prompt pre-empts it (it
        waits at most for the one slice being encoded); it stops once its slices would fill the cache; results are
        the same with or without it. Returns the job (`.cancel()`, `.wait()`, `.encoded`, `.timeline`)."""
        if not self.is_volume or not isinstance(self._engine, SliceEngine):
            raise PromptError("prefetch needs a volume and a 2D box model (3D point models encode one crop per prompt)")
        if self.crop is not None:
            raise PromptError(f"prefetch encodes whole slices, which a Session with crop={self.crop:g} never uses (each "
                              "box encodes its own window): prefetch with crop=None")
        depth = self._u8.shape[0]
        chosen = range(depth) if slices is None else list(slices)
        bad = [z for z in chosen if not 0 <= int(z) < depth]
        if bad:
            raise PromptError(f"prefetch slices {bad[:5]} are not slice indices of this volume (0..{depth - 1})")
        centre = depth // 2 if center is None else int(center)
        self.cancel_prefetch()
        self._prefetch = start_prefetch(self._engine, self._gate, self._image_key, self._u8, outward(chosen, centre),
                                        self._background)
        return self._prefetch

    def cancel_prefetch(self) -> None:
        """Stop a running prefetch (the slice being encoded finishes; what it cached stays cached)."""
        job = getattr(self, "_prefetch", None)
        if job is not None:
            job.cancel()
            job.wait()

    # -- cache -----------------------------------------------------------------------------------------------
    def cache_info(self) -> Dict[str, int]:
        return self.cache.info()

    def clear_cache(self) -> None:
        with self._gate.prompt():
            self.cache.clear()


__all__ = ["Session", "Prediction", "STAGES"]
