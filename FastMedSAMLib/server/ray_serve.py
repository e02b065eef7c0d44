"""`fastmedsam serve --ray --replicas N`: the same FastAPI app (`create_app`) as a Ray Serve deployment.

Each replica builds its own app (its own model Sessions, image store and sessions) and runs torch on
`threads` threads. Requests are routed by image digest: the client sends it as Serve's multiplexing header
(`protocol.HEADER_ROUTE`) and every replica registers the digests it served, so the prompts on one image go to
the replica that holds its embeddings where possible. The routing is a soft affinity: a request that lands on
another replica gets 410 / 404 there and the client rebuilds the session on it from the digest, as after a
restart — any replica can serve any session.
"""
from __future__ import annotations

import time
from typing import Optional

from .settings import ServerSettings

MAX_IMAGES_PER_REPLICA = 64  # digests a replica advertises (LRU); its image store is bounded by bytes anyway


def build_deployment(settings: ServerSettings, replicas: int, threads: int = 1, cpus_per_replica: float = 0.5,
                     gpus_per_replica: float = 0.0):
    from ray import serve

    def app_factory():
        from fastapi import Request

        from .app import create_app

        app = create_app(settings)

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
    from ray import serve

    ray.init(num_cpus=num_cpus, object_store_memory=object_store_mb * 2**20, include_dashboard=False,
             configure_logging=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    cpus = max(0.1, (num_cpus or 2) / (replicas + 1))
    serve.run(build_deployment(settings, replicas, threads, cpus, gpus_per_replica), route_prefix="/")
    while True:
        time.sleep(3600)
