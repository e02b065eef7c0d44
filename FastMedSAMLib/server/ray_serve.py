"""`fastmedsam serve --ray --replicas N`: the same FastAPI app (`create_app`) as a Ray Serve deployment.

Each replica builds its own app (its own model Sessions, image store and sessions) and runs torch on
`threads` threads. Requests are routed by image digest: the client sends it as Serve's multiplexing header
(`protocol.HEADER_ROUTE`) and every replica registers the digests it served, so the prompts on one image go to
the replica that holds its embeddings where possible. The routing is a soft affinity: a request that lands on
another replica gets 410 / 404 there and the client rebuilds the session on it from the digest, as after a
restart. The replicas share a `RayReplicaBoard`: session records (so any replica that holds the image serves any
session of it) and 3D jobs (a job runs on the replica that took it; any replica answers its polls).
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

from .settings import ServerSettings

PROXY_READY_TIMEOUT_S = 60  # Serve's default is 5 s (see run_ray)
MAX_IMAGES_PER_REPLICA = 64  # digests a replica advertises (LRU); its image store is bounded by bytes anyway
BOARD_NAME, BOARD_NAMESPACE = "fastmedsam-jobs", "fastmedsam"


class ReplicaBoardActor:
    """The Ray actor behind `RayReplicaBoard`: job snapshots by id (dropped `keep_s` after they finish) and session
    records by id (until closed; a replica's own idle expiry still applies to what it serves)."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self.jobs: Dict[str, Dict[str, Any]] = {}
        self.finished_at: Dict[str, float] = {}
        self.sessions: Dict[str, Dict[str, Any]] = {}

    def remember(self, record: Dict[str, Any]) -> None:
        self.sessions[record["id"]] = record

    def recall(self, session_id: str) -> Optional[Dict[str, Any]]:
        return self.sessions.get(session_id)

    def forget(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)

    def publish(self, snapshot: Dict[str, Any]) -> None:
        now = time.monotonic()
        for job_id in [j for j, t in self.finished_at.items() if now - t > self.keep_s]:
            self.jobs.pop(job_id, None)
            self.finished_at.pop(job_id)
        cancelled = self.jobs.get(snapshot["id"], {}).get("cancelled", False)
        self.jobs[snapshot["id"]] = {**snapshot, "cancelled": cancelled}
        if snapshot["finished"]:
            self.finished_at[snapshot["id"]] = now

    def read(self, job_id: str) -> Optional[Dict[str, Any]]:
        return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> None:
        if job_id in self.jobs:
            self.jobs[job_id]["cancelled"] = True


class RayReplicaBoard:
    """`jobs.JobBoard` and `stores.SessionBoard` on the named `ReplicaBoardActor` that `run_ray` starts (blocking
    calls: a few ms each)."""

    def __init__(self) -> None:
        import ray

        self._ray = ray
        self._actor = ray.get_actor(BOARD_NAME, namespace=BOARD_NAMESPACE)

    def _call(self, method: str, argument: Any) -> Any:
        return self._ray.get(getattr(self._actor, method).remote(argument))

    def publish(self, snapshot: Dict[str, Any]) -> None:
        self._call("publish", snapshot)

    def read(self, job_id: str) -> Optional[Dict[str, Any]]:
        return self._call("read", job_id)

    def cancel(self, job_id: str) -> None:
        self._call("cancel", job_id)

    def remember(self, record: Dict[str, Any]) -> None:
        self._call("remember", record)

    def recall(self, session_id: str) -> Optional[Dict[str, Any]]:
        return self._call("recall", session_id)

    def forget(self, session_id: str) -> None:
        self._call("forget", session_id)


def build_deployment(settings: ServerSettings, replicas: int, threads: int = 1, cpus_per_replica: float = 0.5,
                     gpus_per_replica: float = 0.0):
    from ray import serve

    def app_factory():
        from fastapi import Request

        from .app import create_app

        app = create_app(settings, board=RayReplicaBoard())

        @app.middleware("http")
        async def advertise_digest(request: Request, call_next):
            response = await call_next(request)
            digest = serve.get_multiplexed_model_id()
            if digest and response.status_code < 300:  # only a replica that served the image claims it
                await serve.get_replica_context().servable_object.hold(digest)
            return response

        return app

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=32,
                      ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    @serve.ingress(app_factory)
    class FastMedSAMReplica:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(threads)

        @serve.multiplexed(max_num_models_per_replica=MAX_IMAGES_PER_REPLICA)
        async def hold(self, digest: str) -> str:
            return digest  # nothing to load: the image and its embeddings arrive through the normal routes

    return FastMedSAMReplica.bind()


def run_ray(settings: ServerSettings, replicas: int, threads: int = 1, object_store_mb: int = 300,
            num_cpus: Optional[int] = None, gpus_per_replica: float = 0.0) -> None:
    """Start a local Ray, deploy `replicas` replicas behind Serve's HTTP proxy on settings.host:port, and block."""
    import ray

    # Serve gives its HTTP proxy 5 s to report ready and kills it after three misses; on a small machine busy
    # loading replicas (a 2-core CI runner) it misses them and the server exits. Ray's processes inherit this.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", str(PROXY_READY_TIMEOUT_S))
    from ray import serve

    ray.init(num_cpus=num_cpus, object_store_memory=object_store_mb * 2**20, include_dashboard=False,
             configure_logging=False)
    board = ray.remote(ReplicaBoardActor).options(name=BOARD_NAME, namespace=BOARD_NAMESPACE, num_cpus=0)
    board = board.remote(settings.job_keep_s)  # held by this driver, which lives as long as the server
    serve.start(http_options={"host": settings.host, "port": settings.port})
    cpus = max(0.1, (num_cpus or 2) / (replicas + 1))
    serve.run(build_deployment(settings, replicas, threads, cpus, gpus_per_replica), route_prefix="/")
    while True:
        time.sleep(3600)
