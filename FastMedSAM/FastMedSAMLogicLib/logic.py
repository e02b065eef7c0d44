"""`FastMedSAMLogic`: volume + markups prompts -> Session -> mask written into one segment. No Qt.

Every prediction is three steps so that a GUI can run the middle one on a worker thread:
`prepare_*` (main thread: reads MRML nodes), `predict` (any one thread: the Session only, never MRML) and
`apply` (main thread: writes the segment, records undo and timings). `segment_box` / `segment_slice` run all
three in a row.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from slicer import util

from FastMedSAMLib.api import Prediction, SessionLike
from FastMedSAMLib.errors import FastMedSAMError, ImageError, PromptError
from FastMedSAMLib.prompts import Box, Box3D, Point
from FastMedSAMLib.timing import ms_since

from . import prompt_nodes, segment_io
from .geometry import ijk_to_local, lps_geometry, parent_to_world
from .model_catalog import pause_state, prefetches, takes_mask
from .overlay import TimingHistory, TimingRecord, format_overlay
from .parameters import Parameters
from .segment_io import Region, read_region, write_region
from .undo import UndoStack, UndoState
from .view_frame import ViewFrame, plane_step_mm, view_containing, view_frame, view_slice_index, volume_frame

PREFETCH = "prefetch"  # a background request: encode the viewed slices ahead of the prompts
PREFETCH_RADIUS = 8  # slices either side of the viewed one: where the next prompts land, not the whole volume
SessionFactory = Callable[[str, str], SessionLike]  # (model, device) -> a Session (local) or a RemoteSession


def _default_session_factory(model: str, device: str) -> SessionLike:
    from FastMedSAMLib import Session

    return Session(model=model, device=device)


def resolve_pause(model: str, pause: float) -> Tuple[float, str]:
    """(knob the model runs at, note for the user). A model without pause heads runs plain (knob 0), and the note
    says the asked knob was not applied: the knob is a panel-wide preference that outlives a model switch.
    A knob outside [0, 1] raises PauseError."""
    from FastMedSAMLib.pause import validate_pause

    value = validate_pause(pause)
    supported, reason = pause_state(model)
    if value > 0.0 and not supported:
        return 0.0, f"pause {value:g} not applied: {reason}"
    return value, ""


@dataclass
class ImagePayload:
    """What the Session needs to (re)load the image; absent from a request when the Session already has it."""

    array: np.ndarray
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: np.ndarray


@dataclass
class Request:
    kind: str  # "slice", "3D" or PREFETCH
    model: str
    device: str
    volume_id: str
    segmentation_id: str
    segment_id: str
    image_key: tuple
    shape_kji: Tuple[int, int, int]  # of the frame the engine sees (the volume's own grid unless drawn in a view)
    is_2d_image: bool  # a one-slice volume goes to the Session as a 2D image
    prompt_key: tuple  # which prompt nodes produced it: a re-run with the same ones refines the pending result
    prompt_region: Region
    box: Optional[Union[Box, Box3D]] = None  # voxel indices
    points: Optional[List[Point]] = None
    previous_mask: Optional[np.ndarray] = None  # the segment on the slice, for models that refine it (mask prompt)
    slice_index: Optional[int] = None
    image: Optional[ImagePayload] = None
    pause: float = 0.0  # token-pausing knob the Session runs at (0 = the plain model)
    pause_note: str = ""  # why an asked knob was not applied, else empty
    logic_ms: Dict[str, float] = field(default_factory=dict)
    frame: Optional[ViewFrame] = None  # the view's voxel grid (None: the volume's own, slices along K)
    prefetch_slices: Optional[Tuple[int, int]] = None  # PREFETCH: first and last slice to encode


@dataclass
class SessionOutcome:
    prediction: Prediction
    device: str
    set_image_ms: float


@dataclass
class SegmentResult:
    prediction: Prediction
    region: Region  # where the segment was rewritten (volume voxel indices)
    timings: Dict[str, float]  # the Session's per-stage ms
    logic_timings: Dict[str, float]  # the Logic's own ms: extract, set_image, prompts, write, total
    record: TimingRecord
    overlay_text: str

    @property
    def mask(self) -> np.ndarray:
        return self.prediction.mask


class FastMedSAMLogic:
    """Scriptable entry point of the module.

    >>> logic = FastMedSAMLogic(slicer.mrmlScene)
    >>> result = logic.segment_box(volumeNode, roiNode, segmentationNode, segmentId, model="litemedsam")
    >>> result.timings, result.logic_timings, result.overlay_text
    """

    def __init__(
        self,
        scene,
        session_factory: SessionFactory = _default_session_factory,
        history_size: int = 20,
        undo_depth: int = 20,
    ) -> None:
        self.scene = scene
        self._session_factory = session_factory
        self._sessions: Dict[Tuple[str, str], SessionLike] = {}
        self._loaded_image: Dict[Tuple[str, str], tuple] = {}  # (model, device) -> image_key set in that Session
        self.history = TimingHistory(history_size)
        self.undo_stack = UndoStack(undo_depth)
        self._observations: List[Tuple[object, int]] = []

    # -- state in the scene ----------------------------------------------------------------------------------
    @property
    def parameters(self) -> Parameters:
        return Parameters.get_or_create(self.scene)

    def ensure_segment(self, segmentation, name: str = "FastMedSAM") -> str:
        """The id of the segment called `name`, created empty if missing."""
        segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
        return segment_id or segmentation.GetSegmentation().AddEmptySegment("", name)

    # -- sessions --------------------------------------------------------------------------------------------
    def session(self, model: str, device: str):
        """The warm Session for (model, device), created on first use (loads the weights)."""
        key = (model, device)
        if key not in self._sessions:
            self._sessions[key] = self._session_factory(model, device)
        return self._sessions[key]

    def release_sessions(self) -> None:
        self._sessions.clear()
        self._loaded_image.clear()

    # -- step 1: MRML -> request (main thread) ---------------------------------------------------------------
    def _image_key(self, volume, frame: ViewFrame) -> tuple:
        image = volume.GetImageData()
        if image is None:
            raise ImageError(f"volume {volume.GetName()!r} has no image data")
        return (volume.GetID(), image.GetMTime(), tuple(ijk_to_local(volume).ravel()), frame.key)

    def frame_of_view(self, volume, slice_to_ras=None) -> ViewFrame:
        """The voxel grid whose slices are the planes of the slice view with this SliceToRAS (4x4 array or
        vtkMatrix4x4); the volume's own grid when `slice_to_ras` is None or the volume is a single slice."""
        if volume is None or volume.GetImageData() is None:
            raise PromptError("choose an input volume with image data first")
        if slice_to_ras is None or volume.GetImageData().GetDimensions()[2] == 1:
            return volume_frame(volume)
        frame = view_frame(volume, slice_to_ras)
        return volume_frame(volume) if frame.is_identity else frame

    def view_slice_index(self, volume, slice_to_ras) -> int:
        """The slice (of the view's frame) that the view with this SliceToRAS shows."""
        frame = self.frame_of_view(volume, slice_to_ras)
        return view_slice_index(frame, volume, slice_to_ras)

    def _frame_image(self, volume, frame: ViewFrame, model: str, device: str, planes: Optional[Tuple[int, int]]):
        """The image key of `volume` seen in `frame`, and the image to send (None when that Session already holds
        it). `planes`: the frame planes needed; an oblique view's resampling is limited to them (a big CT
        resliced whole would take tens of seconds; one plane takes milliseconds)."""
        planes = None if frame.aligned or planes is None else (max(planes[0], 0), min(planes[1], frame.shape[0] - 1))
        key = self._image_key(volume, frame) + (planes,)
        if self._loaded_image.get((model, device)) == key:
            return key, None
        array = util.arrayFromVolume(volume)
        if array.ndim == 4 and array.shape[-1] != 3:
            raise ImageError(f"volume {volume.GetName()!r} has {array.shape[-1]} components; FastMedSAM takes 1 or 3")
        array = array if frame.is_identity else frame.image(array, planes)
        # world geometry when the parent transforms are linear; the volume's own otherwise (only pixels matter)
        to_world = parent_to_world(volume)
        local = frame.index_to_local(volume)
        spacing, origin, direction = lps_geometry(local if to_world is None else to_world @ local)
        image = ImagePayload(np.array(array[0] if frame.shape[0] == 1 else array), spacing, origin, direction)
        return key, image

    def _base_request(self, kind: str, volume, segmentation, segment_id: str, model: str, device: str,
                      prompt_nodes_used: Sequence, slice_index: Optional[int], pause: float,
                      slice_to_ras=None, planes: Optional[Tuple[int, int]] = None) -> Request:
        pause, pause_note = resolve_pause(model, pause)
        if volume is None or segmentation is None:
            raise PromptError("choose an input volume and an output segmentation first")
        if segmentation.GetSegmentation().GetSegment(segment_id) is None:
            raise PromptError(f"segmentation {segmentation.GetName()!r} has no segment {segment_id!r}")
        start = time.perf_counter()
        frame = self.frame_of_view(volume, slice_to_ras)
        key, image = self._frame_image(volume, frame, model, device, planes)
        shape_kji = frame.shape
        extract_ms = ms_since(start)
        prompt_key = (kind, tuple(sorted(n.GetID() for n in prompt_nodes_used)), slice_index, frame.key)
        return Request(
            kind=kind, model=model, device=device, volume_id=volume.GetID(), segmentation_id=segmentation.GetID(),
            segment_id=segment_id, image_key=key, shape_kji=shape_kji, is_2d_image=shape_kji[0] == 1,
            prompt_key=prompt_key, prompt_region=Region(0, 0, 0, 0, 0, 0), slice_index=slice_index, image=image,
            pause=pause, pause_note=pause_note, logic_ms={"extract": extract_ms},
            frame=None if frame.is_identity else frame,
        )

    def prepare_prefetch(self, volume, model: str, device: str = "auto", pause: float = 0.0,
                         slice_to_ras=None, radius: int = PREFETCH_RADIUS) -> Optional[Request]:
        """A background request: encode the slices of the view's frame within `radius` of the one the view shows
        (that one first, then outward; the middle one without a view) so the next prompt there skips the encoder.
        None where prefetching does not apply: a one-slice volume, an oblique view (its planes are resampled per
        prompt), a model that encodes per prompt (3D point models)."""
        if volume is None or volume.GetImageData() is None or not prefetches(model):
            return None
        frame = self.frame_of_view(volume, slice_to_ras)
        depth = frame.shape[0]
        if depth == 1 or not frame.aligned:
            return None
        k = depth // 2 if slice_to_ras is None else view_slice_index(frame, volume, slice_to_ras)
        if not 0 <= k < depth:
            return None  # the view shows a plane outside the volume
        pause, _ = resolve_pause(model, pause)
        key, image = self._frame_image(volume, frame, model, device, None)
        return Request(
            kind=PREFETCH, model=model, device=device, volume_id=volume.GetID(), segmentation_id="", segment_id="",
            image_key=key, shape_kji=frame.shape, is_2d_image=False, prompt_key=(PREFETCH, k, frame.key),
            prompt_region=Region(0, 0, 0, 0, 0, 0), slice_index=k, image=image, pause=pause,
            frame=None if frame.is_identity else frame, prefetch_slices=(max(k - radius, 0), min(k + radius, depth - 1)),
        )

    def prepare_box(self, volume, roi, segmentation, segment_id: str, model: str = "litemedsam",
                    device: str = "auto", pause: float = 0.0, slice_to_ras=None, point_nodes: Sequence = ()) -> Request:
        """A 3D box (ROI node, any orientation, world coordinates) -> slice propagation / 3D prediction.
        `pause`: the token-pausing knob in [0, 1] (0 = the plain model; ignored, with a note, by models without
        pause heads). `slice_to_ras`: the SliceToRAS of the view the box was drawn in; propagation then runs along
        that view's normal (None: along the volume's K axis). `point_nodes`: include / exclude clicks that correct
        the object (models that refine a mask): the segment's current volume goes with them as the previous mask,
        each clicked slice is re-decoded and the correction re-propagates."""
        if roi is None or not prompt_nodes.is_roi(roi):
            raise PromptError("a 3D box prompt needs a markups ROI node")
        start = time.perf_counter()
        frame = self.frame_of_view(volume, slice_to_ras)
        box = prompt_nodes.box3d_from_roi(volume, roi, None if frame.is_identity else frame)
        prompts_ms = ms_since(start)
        request = self._base_request("3D", volume, segmentation, segment_id, model, device, [roi, *point_nodes], None,
                                     pause, slice_to_ras, planes=(int(box.z0), int(box.z1)))
        start = time.perf_counter()
        depth = request.shape_kji[0]
        if box.z1 < 0 or box.z0 > depth - 1:
            raise PromptError(f"ROI {roi.GetName()!r} covers slices {box.z0}..{box.z1}, outside the volume (0..{depth - 1})")
        if request.is_2d_image:
            request.kind, request.slice_index, box = "slice", 0, box.slice_box(0)
        request.box = box
        request.prompt_region = self._box_region(box, request.shape_kji)
        points = prompt_nodes.points_from_nodes(volume, point_nodes, request.frame) if point_nodes else []
        if points and not request.is_2d_image:
            self._add_clicks_3d(request, volume, segmentation, segment_id, points)
        request.logic_ms["prompts"] = prompts_ms + ms_since(start)
        return request

    def _add_clicks_3d(self, request: Request, volume, segmentation, segment_id: str, points: List[Point]) -> None:
        """Clicks on a 3D box: the segment as it is now (in the frame's grid) is the previous mask they correct."""
        if not takes_mask(request.model):
            raise PromptError(f"{request.model} takes no clicks with a 3D box; choose a model that refines masks "
                              "(litemedsam-refine)")
        frame = request.frame
        if frame is not None and not frame.aligned:
            raise PromptError("clicks that re-propagate a 3D object need a view aligned with the volume's planes")
        depth, height, width = (int(n) for n in util.arrayFromVolume(volume).shape[:3])
        current = read_region(segmentation, segment_id, volume, Region(0, depth - 1, 0, height - 1, 0, width - 1))
        previous = current if frame is None else frame.image(current.astype(np.uint8)) > 0
        request.points, request.previous_mask = points, previous
        region = request.prompt_region.union(self._points_region(points, request.shape_kji))
        if previous.any():  # what the clicks may remove
            kk, jj, ii = np.nonzero(previous)
            region = region.union(Region(int(kk.min()), int(kk.max()), int(jj.min()), int(jj.max()), int(ii.min()), int(ii.max())))
        request.prompt_region = region
        # every click is a step of its own (one undo step), never a re-run that replaces the previous click's result
        request.prompt_key += (tuple((p.x, p.y, p.z, p.positive) for p in points),)

    def prepare_slice(self, volume, prompt_nodes_used: Sequence, segmentation, segment_id: str,
                      slice_index: Optional[int], model: str = "litemedsam", device: str = "auto", pause: float = 0.0,
                      slice_to_ras=None) -> Request:
        """Prompts on one slice: an ROI's in-plane box on that slice, and/or the include/exclude points on it.

        `slice_to_ras`: the SliceToRAS of the view the prompts were drawn in; the slice is then a plane of that view
        (`slice_index` counts along its normal; None = the plane the view shows). None: slices along K."""
        if slice_index is None:
            if slice_to_ras is None:
                raise PromptError("give the slice index or the view the prompts were drawn in")
            slice_index = self.view_slice_index(volume, slice_to_ras)
        planes = (int(slice_index), int(slice_index)) if isinstance(slice_index, (int, np.integer)) else None
        request = self._base_request("slice", volume, segmentation, segment_id, model, device,
                                     prompt_nodes_used, slice_index, pause, slice_to_ras, planes)
        start = time.perf_counter()
        depth = request.shape_kji[0]
        if not (isinstance(slice_index, (int, np.integer)) and 0 <= slice_index < depth):
            raise PromptError(f"slice index {slice_index!r} is not a slice of this volume (0..{depth - 1})")
        rois = [n for n in prompt_nodes_used if prompt_nodes.is_roi(n)]
        if len(rois) > 1:
            raise PromptError(f"one box per slice prediction, got {len(rois)} ROI nodes")
        frame = request.frame
        box = prompt_nodes.box_from_roi(volume, rois[0], int(slice_index), frame) if rois else None
        points = prompt_nodes.points_on_slice(prompt_nodes.points_from_nodes(volume, prompt_nodes_used, frame),
                                              int(slice_index))
        if box is None and not points:
            raise PromptError(f"no prompt on slice {slice_index}: place a box or a point on it")
        if request.is_2d_image:
            box = Box(box.x0, box.y0, box.x1, box.y1) if box is not None else None
            points = [Point(p.x, p.y, None, p.positive) for p in points]
        request.box, request.points = box, points or None
        if points and takes_mask(model):  # a click refines what the segment holds on this slice
            request.previous_mask = self._segment_on_slice(volume, segmentation, segment_id, int(slice_index),
                                                           request.shape_kji)
        region = self._box_region(box, request.shape_kji) if box is not None else None
        if points:
            point_region = self._points_region(points, request.shape_kji, int(slice_index))
            region = point_region if region is None else region.union(point_region)
        request.prompt_region = region
        request.logic_ms["prompts"] = ms_since(start)
        return request

    def prepare_points(self, volume, prompt_nodes_used: Sequence, segmentation, segment_id: str,
                       model: str, device: str = "auto", pause: float = 0.0) -> Request:
        """Include / exclude points anywhere in the volume -> a 3D prediction (3D point models)."""
        request = self._base_request("3D", volume, segmentation, segment_id, model, device, prompt_nodes_used, None,
                                     pause)
        start = time.perf_counter()
        points = prompt_nodes.points_from_nodes(volume, prompt_nodes_used)
        if not any(p.positive for p in points):
            raise PromptError("place at least one include point")
        depth, height, width = request.shape_kji
        zs = [int(round(p.z)) for p in points]
        region = self._points_region(points, request.shape_kji, 0)
        request.points = points
        request.prompt_region = Region(max(min(zs), 0), min(max(zs), depth - 1), region.j0, region.j1, region.i0, region.i1)
        request.logic_ms["prompts"] = ms_since(start)
        return request

    @staticmethod
    def _segment_on_slice(volume, segmentation, segment_id: str, k: int, shape_kji) -> Optional[np.ndarray]:
        """The segment's (J, I) mask on slice k, None when it is empty there."""
        _, height, width = shape_kji
        mask = read_region(segmentation, segment_id, volume, Region(k, k, 0, height - 1, 0, width - 1))[0]
        return mask if mask.any() else None

    @staticmethod
    def _box_region(box, shape_kji) -> Region:
        if isinstance(box, Box3D):
            k0, k1 = int(box.z0), int(box.z1)
        else:
            k0 = k1 = 0 if box.z is None else int(box.z)
        return Region(k0, k1, math.floor(box.y0), math.ceil(box.y1), math.floor(box.x0), math.ceil(box.x1)).clipped(shape_kji)

    @staticmethod
    def _points_region(points: Sequence[Point], shape_kji, k: Optional[int] = None) -> Region:
        """The box around the points: on slice `k`, or (None) over the slices they lie on."""
        ks = [k] if k is not None else [int(round(p.z)) for p in points]
        xs = [p.x for p in points]
        ys = [p.y for p in points]
        return Region(min(ks), max(ks), math.floor(min(ys)), math.ceil(max(ys)), math.floor(min(xs)),
                      math.ceil(max(xs))).clipped(shape_kji)

    # -- step 2: the Session (worker thread; no MRML here) ---------------------------------------------------
    def predict(self, request: Request, progress: Optional[Callable[[int, int], None]] = None) -> Optional[SessionOutcome]:
        """`progress(done, total)` follows a 3D propagation slice by slice (on this thread). A prefetch request
        only starts the Session's background encoding and returns None."""
        session = self.session(request.model, request.device)
        set_image_ms = 0.0
        if request.image is not None:
            start = time.perf_counter()
            payload = request.image
            session.set_image(payload.array, spacing=payload.spacing, origin=payload.origin, direction=payload.direction)
            self._loaded_image[(request.model, request.device)] = request.image_key
            set_image_ms = ms_since(start)
        elif self._loaded_image.get((request.model, request.device)) != request.image_key:
            raise FastMedSAMError("the image changed since this prompt was prepared; prompt again")
        session.set_pause(request.pause)  # the same Session (weights, cached embeddings) at another knob
        if request.kind == PREFETCH:
            first, last = request.prefetch_slices
            session.prefetch(slices=range(first, last + 1), center=request.slice_index)
            return None
        extra = {} if progress is None else {"progress": progress}
        if request.previous_mask is not None:
            extra["mask"] = request.previous_mask
        prediction = session.predict(box=request.box, points=request.points, **extra)
        return SessionOutcome(prediction, str(getattr(session, "device", request.device)), set_image_ms)

    # -- step 3: mask -> segment (main thread) ---------------------------------------------------------------
    def prediction_region(self, request: Request, outcome: SessionOutcome) -> Tuple[Region, np.ndarray, np.ndarray]:
        """The volume region the prediction rewrites (the prompt's box on the affected slices, grown to hold every
        predicted voxel there), the mask inside it, and which of its voxels it covers (all, unless the prompt was
        drawn in an oblique view: then the voxels of the resliced region, the rest keep their value)."""
        mask = self._mask_kji(request, outcome.prediction)
        region = self._write_region(request, outcome.prediction, mask)
        if request.frame is None:
            return region, mask[region.slices], np.ones(region.shape, dtype=bool)
        return request.frame.to_volume(region, mask[region.slices])

    def apply(self, request: Request, outcome: SessionOutcome) -> SegmentResult:
        """Write the prediction into the segment: only its region changes, one undo state is recorded."""
        start = time.perf_counter()
        volume, segmentation = self._nodes(request)
        self.attach_segmentation(volume, segmentation)
        written, mask, covered = self.prediction_region(request, outcome)
        pending = self._refined_state(request, written)
        region = written if pending is None else written.union(pending.region)
        current = read_region(segmentation, request.segment_id, volume, region)
        new = current.copy()
        if pending is not None:
            self._paste(new, region, pending.region, pending.previous)
        self._paste(new, region, written, mask, covered)
        write_region(segmentation, request.segment_id, volume, region, new)
        self.undo_stack.push(UndoState(segmentation.GetID(), request.segment_id, volume.GetID(), region, current,
                                       prompt_key=request.prompt_key))
        return self.record(request, outcome, region, ms_since(start))

    def record(self, request: Request, outcome: SessionOutcome, region: Region, write_ms: float) -> SegmentResult:
        """Timings of one prediction: kept in the history, formatted for the overlay."""
        prediction = outcome.prediction
        logic_ms = dict(request.logic_ms)
        logic_ms["set_image"] = outcome.set_image_ms
        logic_ms["write"] = write_ms
        logic_ms["total"] = sum(logic_ms.values())
        record = TimingRecord(
            model=request.model, device=outcome.device, kind=request.kind, session_ms=dict(prediction.timings),
            logic_ms=logic_ms, encoder_calls=int(prediction.encoder_calls), slices=region.shape[0],
            pause=request.pause, paused_fraction=float(prediction.paused_fraction), pause_note=request.pause_note,
        )
        self.history.add(record)
        return SegmentResult(prediction, region, dict(prediction.timings), logic_ms, record, format_overlay(record))

    def _nodes(self, request: Request):
        volume = self.scene.GetNodeByID(request.volume_id)
        segmentation = self.scene.GetNodeByID(request.segmentation_id)
        if volume is None or segmentation is None:
            raise FastMedSAMError("the volume or segmentation was removed while the prediction ran")
        if segmentation.GetSegmentation().GetSegment(request.segment_id) is None:
            raise FastMedSAMError(f"segment {request.segment_id!r} was removed while the prediction ran")
        return volume, segmentation

    def attach_segmentation(self, volume, segmentation) -> None:
        """Put an empty segmentation under the volume's parent transform and give it the volume's geometry.

        A segmentation that already holds voxels keeps its transform (moving it would move them); masks are then
        written through the linear relation between the two frames."""
        if segmentation.GetTransformNodeID() is None and volume.GetTransformNodeID() is not None:
            if not segment_io.has_voxels(segmentation):
                segmentation.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        if not segmentation.GetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole()):
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)

    @staticmethod
    def _mask_kji(request: Request, prediction) -> np.ndarray:
        """The prediction as a (K, J, I) bool volume in the volume's grid."""
        mask = np.asarray(prediction.mask, dtype=bool)
        if mask.ndim == 2:
            full = np.zeros(request.shape_kji, dtype=bool)
            k = request.slice_index if prediction.slice_index is None else prediction.slice_index
            full[int(k)] = mask
            return full
        if mask.shape != tuple(request.shape_kji):
            raise FastMedSAMError(f"the model returned a mask of shape {mask.shape} for a volume of {request.shape_kji}")
        return mask

    @staticmethod
    def _write_region(request: Request, prediction, mask: np.ndarray) -> Region:
        """The prompt's box on the affected slices, grown to hold every predicted voxel on them."""
        region = request.prompt_region
        if request.kind == "3D":
            z_range = getattr(prediction, "z_range", None)
            if z_range is not None:
                region = Region(int(z_range[0]), int(z_range[1]), region.j0, region.j1, region.i0, region.i1)
            else:  # a 3D model may change any slice
                region = Region(0, mask.shape[0] - 1, region.j0, region.j1, region.i0, region.i1)
        part = mask[region.k0:region.k1 + 1]
        if part.any():
            _, js, is_ = np.nonzero(part)
            region = region.union(Region(region.k0, region.k1, int(js.min()), int(js.max()), int(is_.min()), int(is_.max())))
        return region

    def _refined_state(self, request: Request, region: Region) -> Optional[UndoState]:
        """The previous pending result of the same prompts on overlapping slices: a re-run replaces it."""
        last = self.undo_stack.peek()
        if (last is None or last.accepted or last.prompt_key != request.prompt_key
                or last.segmentation_id != request.segmentation_id or last.segment_id != request.segment_id
                or last.region.k1 < region.k0 or last.region.k0 > region.k1):
            return None
        return last

    @staticmethod
    def _paste(target: np.ndarray, target_region: Region, part: Region, values: np.ndarray,
               where: Optional[np.ndarray] = None) -> None:
        view = target[
            part.k0 - target_region.k0:part.k1 - target_region.k0 + 1,
            part.j0 - target_region.j0:part.j1 - target_region.j0 + 1,
            part.i0 - target_region.i0:part.i1 - target_region.i0 + 1,
        ]
        if where is None:
            view[...] = values
        else:
            view[where] = values[where]

    # -- the scriptable surface ------------------------------------------------------------------------------
    def segment_box(self, volumeNode, roiNode, segmentationNode, segmentId: str, model: str = "litemedsam",
                    device: str = "auto", pause: float = 0.0, sliceToRAS=None) -> SegmentResult:
        """3D ROI -> slice-by-slice propagation (2D box models) or a 3D prediction; one undo state.
        `pause` in [0, 1]: token pausing (0 = the plain model, higher = faster encoding, less exact).
        `sliceToRAS`: the view the box was drawn in (propagation along its normal); None = along K."""
        request = self.prepare_box(volumeNode, roiNode, segmentationNode, segmentId, model, device, pause, sliceToRAS)
        return self.apply(request, self.predict(request))

    def segment_slice(self, volumeNode, promptNodes: Sequence, segmentationNode, segmentId: str,
                      sliceIndex: Optional[int], model: str = "litemedsam", device: str = "auto", pause: float = 0.0,
                      sliceToRAS=None) -> SegmentResult:
        """Box (ROI) and/or include/exclude points on slice `sliceIndex` -> that slice; one undo state.
        `sliceToRAS`: the view the prompts were drawn in (its plane; `sliceIndex` None = the plane it shows)."""
        request = self.prepare_slice(volumeNode, promptNodes, segmentationNode, segmentId, sliceIndex, model, device,
                                     pause, sliceToRAS)
        return self.apply(request, self.predict(request))

    # -- undo / accept / clear -------------------------------------------------------------------------------
    def undo(self) -> bool:
        """Restore the region the newest prompt rewrote. False when there is nothing to undo."""
        state = self.undo_stack.pop()
        if state is None:
            return False
        segmentation = self.scene.GetNodeByID(state.segmentation_id)
        volume = self.scene.GetNodeByID(state.volume_id)
        if segmentation is None or volume is None or segmentation.GetSegmentation().GetSegment(state.segment_id) is None:
            raise FastMedSAMError("cannot undo: the segmentation, segment or volume of that prompt was removed")
        write_region(segmentation, state.segment_id, volume, state.region, state.previous)
        return True

    def accept(self) -> None:
        """Keep the results so far: later prompts start a new object instead of refining these."""
        self.undo_stack.accept()

    def clear(self) -> int:
        """Undo every result not accepted yet; returns how many were undone."""
        count = len(self.undo_stack.pending())
        for _ in range(count):
            self.undo()
        return count

    # -- prompt events ---------------------------------------------------------------------------------------
    def watch_prompt_nodes(self, nodes: Sequence, callback: Callable[[object], None]) -> None:
        """Call `callback(node)` once a prompt is complete: a point placed, an ROI's last corner placed (never after
        its first click: the box is still empty then), or a handle drag ended."""
        self.unwatch_prompt_nodes()
        for node in nodes:
            if node is None:
                continue
            for event in (node.PointPositionDefinedEvent, node.PointEndInteractionEvent):
                tag = node.AddObserver(event, lambda caller, _event, cb=callback: self._on_prompt_event(caller, cb))
                self._observations.append((node, tag))

    @staticmethod
    def _on_prompt_event(node, callback: Callable[[object], None]) -> None:
        if prompt_nodes.is_roi(node) and not prompt_nodes.roi_complete(node):
            return
        callback(node)

    @staticmethod
    def default_input_volume(scene):
        """The first volume the module's input selector can show: a scalar volume that is not a labelmap
        (`GetFirstNodeByClass` matches subclasses, and the selector hides them)."""
        nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        for index in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(index)
            if not node.IsA("vtkMRMLLabelMapVolumeNode"):
                return node
        return None

    def view_of_prompt(self, node, views: Sequence[Tuple[str, object]], preferred: Optional[str] = None):
        """The name of the slice view a prompt node was drawn in (see `view_frame.view_containing`): an ROI's
        centre, a fiducial's newest point. `views`: (name, SliceToRAS) pairs."""
        if node is None or node.GetNumberOfControlPoints() == 0:
            return preferred
        if prompt_nodes.is_roi(node):
            centre = [0.0, 0.0, 0.0]
            node.GetCenterWorld(centre)
            points = np.array([centre])
        else:
            points = prompt_nodes.defined_points_world(node)[-1:]
        return view_containing(points, views, preferred) or preferred

    def plane_step(self, volume, slice_to_ras) -> float:
        """mm between two planes of the view's frame (what one slice along the view's normal is)."""
        return plane_step_mm(self.frame_of_view(volume, slice_to_ras), volume)

    def unwatch_prompt_nodes(self) -> None:
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations.clear()

    def reset(self) -> None:
        """Forget everything tied to the current scene (it is being closed); the warm Sessions stay."""
        self.unwatch_prompt_nodes()
        self.undo_stack = UndoStack(self.undo_stack.depth)
        self._loaded_image.clear()

    def cleanup(self) -> None:
        self.unwatch_prompt_nodes()
        self.release_sessions()


__all__ = ["FastMedSAMLogic", "SegmentResult", "Request", "SessionOutcome", "resolve_pause"]
