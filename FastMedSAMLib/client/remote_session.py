"""`RemoteSession`: the `SessionLike` contract over HTTP to a FastMedSAM server (`fastmedsam serve`).

>>> s = RemoteSession("http://127.0.0.1:8765", token=None, model="litemedsam")
>>> s.set_image(volume, spacing=(0.8, 0.8, 5.0))      # sends the voxels only if the server lacks this digest
>>> s.predict(box=Box(120, 200, 180, 260, z=35)).mask

The image is addressed by its digest; the client keeps a reference to it, so a session the server expired or
forgot (restart) is rebuilt transparently: re-open, re-upload if the server lacks the digest, resend the prompt.
Every Prediction carries the server's per-stage `timings` and, in `transport`, queue / server / transfer ms.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ..api import Prediction
from ..errors import BackendError, JobCancelledError, PauseError, PromptError
from ..pause.knob import validate_pause
from ..prompts import Box, Box3D, Point
from . import protocol as p
from .serialization import image_digest, pack_frame, pack_image, pack_mask, unpack_mask
from .transport import Transport

Progress = Callable[[int, int], None]  # (slices done, slices in all) while a 3D job runs
JOB_POLL_S = 0.1
# A session or image the server lost is rebuilt this many times per call (a scaled-out server's soft routing can
# send a request to a replica that has not seen the image yet), waiting a little longer each time.
REBUILD_ATTEMPTS = 5
REBUILD_PAUSE_S = 0.2


def _num(value: Any) -> Any:
    """JSON-safe number (prompts often carry numpy scalars); None stays None."""
    return None if value is None else float(value)


def encode_prompts(box: Optional[Union[Box, Box3D]], points: Optional[Sequence[Point]]) -> Dict[str, Any]:
    """Prompts as JSON lists (the server's `decode_prompts` rebuilds the same objects)."""
    out: Dict[str, Any] = {}
    if isinstance(box, Box3D):
        out["box3d"] = [_num(v) for v in (box.x0, box.y0, box.z0, box.x1, box.y1, box.z1)]
    elif isinstance(box, Box):
        out["box"] = [_num(v) for v in (box.x0, box.y0, box.x1, box.y1)] + [None if box.z is None else int(box.z)]
    elif box is not None:
        raise PromptError(f"box must be a Box or a Box3D, not {type(box).__name__}")
    if points:
        out["points"] = [[_num(pt.x), _num(pt.y), _num(pt.z), bool(pt.positive)] for pt in points]
    return out


def _slice(z: Any) -> int:
    if float(z) != int(z):
        raise PromptError(f"slice index {z} is not a whole number")
    return int(z)


def decode_prompts(data: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON prompts back into Box / Box3D / Points (PromptError for anything malformed)."""
    try:
        out: Dict[str, Any] = {}
        if data.get("box") is not None:
            x0, y0, x1, y1, z = data["box"]
            out["box"] = Box(float(x0), float(y0), float(x1), float(y1), None if z is None else _slice(z))
        if data.get("box3d") is not None:
            x0, y0, z0, x1, y1, z1 = data["box3d"]
            out["box3d"] = Box3D(float(x0), float(y0), _slice(z0), float(x1), float(y1), _slice(z1))
        if data.get("points"):
            out["points"] = [Point(float(x), float(y), None if z is None else float(z), bool(pos))
                             for x, y, z, pos in data["points"]]
        return out
    except (TypeError, ValueError) as exc:
        if isinstance(exc, PromptError):
            raise
        raise PromptError(f"malformed prompt {data!r}: {exc}") from None


class RemoteSession:
    """Interactive segmentation on a FastMedSAM server; same contract and errors as `Session` (see api.SessionLike).

    `token`: the server's bearer token (None on an unauthenticated loopback server). `timeout`: seconds one HTTP
    request may take (long work runs as a polled job, so requests stay short)."""

    def __init__(self, url: str, token: Optional[str] = None, model: str = "litemedsam", *, pause: float = 0.0,
                 points_as_box: bool = False, timeout: float = 60.0) -> None:
        validate_pause(pause)
        self.transport = Transport(url, token, timeout)
        self.model_name = model
        self.points_as_box = points_as_box
        self.device = "remote"
        models = self.transport.request("GET", p.PATH_MODELS).json()["models"]
        info = next((m for m in models if m["name"] == model), None)
        if info is None:
            from ..errors import RegistryError

            raise RegistryError(f"the server has no model {model!r} (it has: {', '.join(m['name'] for m in models)})")
        self.model_info: Dict[str, Any] = info
        self.pause = 0.0
        self.set_pause(pause)
        self._image: Optional[Tuple[np.ndarray, Dict[str, Any], Optional[Tuple[float, float]]]] = None
        self.digest: Optional[str] = None
        self.session_id: Optional[str] = None
        self.uploaded_bytes = 0  # image bytes this client sent (0 when the server already had the digest)
        self.last_upload_ms = 0.0

    # -- knob ------------------------------------------------------------------------------------------------
    def set_pause(self, pause: float) -> None:
        value = validate_pause(pause)
        if value and not self.model_info.get("pause"):
            raise PauseError(f"model {self.model_name!r} has no pause heads; use pause=0")
        self.pause = value

    # -- image -----------------------------------------------------------------------------------------------
    def set_image(self, image: object, spacing: Optional[Sequence[float]] = None, *,
                  origin: Optional[Sequence[float]] = None, direction: Optional[np.ndarray] = None,
                  modality: Optional[str] = None, window: Optional[Tuple[float, float]] = None) -> None:
        """Send the image if the server lacks it and open a session on it; on failure the previous image stays."""
        array, geometry = _image_parts(image, spacing, origin, direction, modality)
        window = None if window is None else (float(window[0]), float(window[1]))
        digest = image_digest(array, geometry)
        session_id = self._open(array, geometry, digest, window)
        old, self.session_id = self.session_id, session_id
        self._image, self.digest = (array, geometry, window), digest
        if old and old != session_id:
            self._close_quietly(old)

    def _open(self, array: np.ndarray, geometry: Dict[str, Any], digest: str,
              window: Optional[Tuple[float, float]]) -> str:
        """Upload if missing, then open a server session; the session id."""
        path = p.PATH_IMAGE.format(digest=digest)
        previous, self.transport.route = self.transport.route, digest
        try:
            return self._open_routed(path, array, geometry, digest, window)
        except BaseException:
            self.transport.route = previous  # the old image's session stays usable
            raise

    def _open_routed(self, path: str, array: np.ndarray, geometry: Dict[str, Any], digest: str,
                     window: Optional[Tuple[float, float]]) -> str:
        if self.transport.request("HEAD", path, expected=(200, 404)).status == 404:
            self._upload(path, array, geometry)
        body = {"model": self.model_name, "image": digest, "window": window, "points_as_box": self.points_as_box}
        for attempt in range(REBUILD_ATTEMPTS):
            response = self.transport.request("POST", p.PATH_SESSIONS, json_body=body, expected=(201, 409))
            if response.status == 201:
                return str(response.json()["session"])
            # the server lacks the image after all (evicted since the check, or another replica of a scaled-out
            # server answered): send it and open again
            time.sleep(REBUILD_PAUSE_S * attempt)
            self._upload(path, array, geometry)
        raise BackendError(f"the server kept losing the image ({REBUILD_ATTEMPTS} uploads); try again")

    def _upload(self, path: str, array: np.ndarray, geometry: Dict[str, Any]) -> None:
        start = time.perf_counter()
        _, frame = pack_image(array, geometry)
        self.transport.request("PUT", path, body=frame, content_type=p.FRAME_MEDIA_TYPE, expected=(201,))
        self.uploaded_bytes += len(frame)
        self.last_upload_ms = (time.perf_counter() - start) * 1000.0

    def _reopen(self) -> None:
        """The server forgot the session (expired, restarted): rebuild it from the image this client holds."""
        assert self._image is not None and self.digest is not None
        array, geometry, window = self._image
        self.session_id = self._open(array, geometry, self.digest, window)

    def _close_quietly(self, session_id: str) -> None:
        try:
            self.transport.request("DELETE", p.PATH_SESSION.format(session_id=session_id), expected=(204, 410))
        except BackendError:
            pass  # the server reaps idle sessions anyway

    def close(self) -> None:
        if self.session_id:
            self._close_quietly(self.session_id)
            self.session_id = None
        self.transport.close()

    # -- prediction ------------------------------------------------------------------------------------------
    def predict(self, box: Optional[Union[Box, Box3D]] = None, points: Optional[Sequence[Point]] = None,
                mask: Optional[np.ndarray] = None, *, progress: Optional[Progress] = None) -> Prediction:
        """As `Session.predict`; a 3D box runs as a server job, polled (with `progress(done, total)`)."""
        if self.session_id is None:
            raise PromptError("no image: call set_image() before predict()")
        header = {"kind": "prompt", "prompts": encode_prompts(box, points), "pause": self.pause}
        body = pack_mask(mask, header) if mask is not None else pack_frame(header, b"")
        start = time.perf_counter()
        for attempt in range(REBUILD_ATTEMPTS):
            try:
                response = self.transport.request("POST", p.PATH_PREDICT.format(session_id=self.session_id),
                                                  body=body, content_type=p.FRAME_MEDIA_TYPE, expected=(200, 202, 410))
                if response.status == 410:
                    raise _SessionGone()
                if response.status == 202:
                    response = self._await_job(response.json()["job"], progress)
                break
            except _SessionGone:
                if attempt == REBUILD_ATTEMPTS - 1:
                    raise BackendError(f"the server lost the session {REBUILD_ATTEMPTS} times in a row; try again") from None
                time.sleep(REBUILD_PAUSE_S * attempt)
                self._reopen()
        return self._prediction(response, (time.perf_counter() - start) * 1000.0)

    def prefetch(self, slices: Optional[Sequence[int]] = None, center: Optional[int] = None) -> int:
        """As `Session.prefetch`, on the server: it encodes the slices (`center` first, then outward) in the
        background at this session's knob, and later prompts on them skip the encoder. Returns at once with the
        number of slices queued; nothing to wait for (predictions pre-empt it; results never change)."""
        if self.session_id is None:
            raise PromptError("no image: call set_image() before prefetch()")
        body = {"slices": None if slices is None else [int(z) for z in slices],
                "center": None if center is None else int(center), "pause": self.pause}
        for attempt in range(REBUILD_ATTEMPTS):
            response = self.transport.request("POST", p.PATH_PREFETCH.format(session_id=self.session_id),
                                              json_body=body, expected=(202, 410))
            if response.status == 202:
                return int(response.json()["slices"])
            time.sleep(REBUILD_PAUSE_S * attempt)
            self._reopen()
        raise BackendError(f"the server lost the session {REBUILD_ATTEMPTS} times in a row; try again")

    def _await_job(self, job_id: str, progress: Optional[Progress]):
        path = p.PATH_JOB.format(job_id=job_id)
        try:
            while True:
                response = self.transport.request("GET", path + "?wait=0.5", expected=(200, 410))
                if response.status == 410:
                    raise _SessionGone()
                if response.is_frame:
                    return response
                state = response.json()
                if progress is not None:
                    progress(int(state["done"]), int(state["total"]))
                time.sleep(0 if state.get("waited") else JOB_POLL_S)
        except (KeyboardInterrupt, JobCancelledError):
            self._cancel(path)
            raise

    def _cancel(self, path: str) -> None:
        try:
            self.transport.request("DELETE", path, expected=(204, 410))
        except BackendError:
            pass

    def _prediction(self, response, round_trip_ms: float) -> Prediction:
        mask, header = unpack_mask(response.body)
        server_ms = float(header.get("server_ms", response.server_ms))
        transport = {"queue": float(header.get("queue_ms", 0.0)), "server": server_ms,
                     "transfer": max(round_trip_ms - server_ms, 0.0), "round_trip": round_trip_ms}
        prompt = decode_prompts(header.get("prompt") or {})
        z_range = header.get("z_range")
        return Prediction(
            mask=mask, timings={k: float(v) for k, v in header["timings"].items()},
            slice_index=header.get("slice_index"), z_range=None if z_range is None else (int(z_range[0]), int(z_range[1])),
            encoder_calls=int(header.get("encoder_calls", 0)), iou=float(header.get("iou", float("nan"))),
            prompt=prompt, paused_by_block=header.get("paused_by_block"), transport=transport,
        )

    # -- cache -----------------------------------------------------------------------------------------------
    def cache_info(self) -> Dict[str, int]:
        return dict(self.transport.request("GET", p.PATH_CACHE.format(model=self.model_name)).json())

    def clear_cache(self) -> None:
        self.transport.request("DELETE", p.PATH_CACHE.format(model=self.model_name), expected=(204,))


class _SessionGone(Exception):
    """Internal: the server answered 410 for the session; the caller rebuilds it."""


def _image_parts(image: object, spacing, origin, direction, modality) -> Tuple[np.ndarray, Dict[str, Any]]:
    if isinstance(image, (str, Path)):
        from ..io.images import read_image  # SimpleITK, not torch: only for paths

        image = read_image(image)
    if isinstance(image, np.ndarray):
        array = image
        geometry = {"spacing": spacing, "origin": origin, "direction": direction, "modality": modality}
    elif hasattr(image, "array") and hasattr(image, "spacing"):  # an io.images.Image, already normalised
        array = image.array
        geometry = {"spacing": image.spacing, "origin": image.origin, "direction": image.direction,
                    "modality": getattr(image, "modality_hint", None)}
    else:
        from ..errors import ImageError

        raise ImageError(f"set_image takes an array, a path or an Image, not {type(image).__name__}")
    return np.ascontiguousarray(array), geometry


__all__ = ["RemoteSession", "encode_prompts", "decode_prompts"]
