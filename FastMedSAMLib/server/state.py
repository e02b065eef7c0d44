"""Everything one server process holds, built once by `create_app` (no import-time globals)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Protocol

import numpy as np

from ..client.remote_session import decode_prompts, encode_prompts
from ..client.serialization import pack_mask
from ..io.images import Image
from .auth import TokenCheck
from .jobs import JobBoard, JobStore
from .pool import ModelPool
from .settings import ServerSettings
from .stores import BlobStore, ServerSession, SessionBoard, SessionRegistry

log = logging.getLogger("fastmedsam.server")
MB = 2**20


class ReplicaBoard(JobBoard, SessionBoard, Protocol):
    """What the replicas of a scaled-out server share: 3D jobs and session records (see `ray_serve`)."""


@dataclass
class ServerState:
    settings: ServerSettings
    auth: TokenCheck
    blobs: BlobStore
    sessions: SessionRegistry
    pool: ModelPool
    jobs: JobStore

    @classmethod
    def build(cls, settings: ServerSettings, session_factory: Optional[Callable[[str], Any]] = None,
              board: Optional[ReplicaBoard] = None) -> "ServerState":
        if session_factory is None:
            def session_factory(model: str) -> Any:
                from ..session import Session

                return Session(model=model, device=settings.device, cache_mb=settings.embedding_cache_mb)
        return cls(
            settings=settings,
            auth=TokenCheck(settings.tokens()),
            blobs=BlobStore(int(settings.blob_store_mb * MB)),
            sessions=SessionRegistry(settings.max_sessions_per_token, settings.session_idle_s, board),
            pool=ModelPool(session_factory, settings.max_queue),
            jobs=JobStore(settings.job_keep_s, board),
        )

    @property
    def max_body_bytes(self) -> int:
        return int(self.settings.max_body_mb * MB)

    def predict_frame(self, record: ServerSession, image: Image, header: Dict[str, Any],
                      mask: Optional[np.ndarray], progress: Optional[Callable[[int, int], None]] = None) -> bytes:
        """Run one prediction on the model's Session; the answer frame (mask bounding box + timings)."""
        start = time.perf_counter()
        prompts = decode_prompts(header.get("prompts") or {})
        box = prompts.get("box3d", prompts.get("box"))

        def work(session: Any) -> Any:
            return session.predict(box=box, points=prompts.get("points"), mask=mask, progress=progress)

        prediction, queued_ms = self.pool.run(record, image, float(header.get("pause", 0.0)), work)
        server_ms = (time.perf_counter() - start) * 1000.0
        log.info("predict owner=%s image=%s model=%s prompt=%s queue=%.1fms total=%.1fms", record.owner,
                 record.digest[:12], record.model, "/".join(sorted(prompts)) or "-", queued_ms, server_ms)
        used = prediction.prompt  # the clipped prompt the Session used
        echo = encode_prompts(used.get("box3d", used.get("box")), used.get("points"))
        answer = {
            "timings": {k: float(v) for k, v in prediction.timings.items()},
            "slice_index": None if prediction.slice_index is None else int(prediction.slice_index),
            "z_range": None if prediction.z_range is None else [int(v) for v in prediction.z_range],
            "encoder_calls": int(prediction.encoder_calls), "iou": float(prediction.iou), "prompt": echo,
            "paused_by_block": None if prediction.paused_by_block is None else [float(v) for v in prediction.paused_by_block], "queue_ms": queued_ms, "server_ms": server_ms,
        }
        return pack_mask(prediction.mask, answer)
