"""`fastmedsam serve [--host 127.0.0.1] [--port 8765] [--token-file FILE] [--preload litemedsam]`"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .arguments import add_device, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve predictions over HTTP (for RemoteSession, the Slicer module, a team)",
        description=(
            "Run the FastMedSAM server. It binds 127.0.0.1 unless --host says otherwise; any other address needs a "
            "token, from the FASTMEDSAM_TOKEN environment variable ('tok' or 'alice=tok1,bob=tok2') or --token-file "
            "(never the command line). Limits come from FASTMEDSAM_* variables (see server/settings.py). The "
            "OpenAPI schema is at /openapi.json."
        ),
    )
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--token-file", type=Path, default=None, help="file of 'name token' lines")
    p.add_argument("--preload", default="", help="comma-separated models to load before serving")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--ray", action="store_true", help="serve through Ray Serve (pip install 'ray[serve]')")
    p.add_argument("--replicas", type=positive_int, default=2, help="with --ray: replicas, one model set each (default 2)")
    p.add_argument("--threads", type=positive_int, default=1, help="with --ray: torch threads per replica (default 1)")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="with --ray: GPU share per replica, e.g. 1 or 0.5")
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..server.app import create_app
    from ..server.settings import ServerSettings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("token_file", args.token_file)) if v is not None}
    if "FASTMEDSAM_DEVICE" not in os.environ:
        overrides["device"] = args.device
    settings = ServerSettings(**overrides)
    settings.check_exposure()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.ray:
        from ..server.ray_serve import run_ray

        run_ray(settings, args.replicas, args.threads, gpus_per_replica=args.gpus_per_replica,
                num_cpus=os.cpu_count())
        return 0
    app = create_app(settings)
    for model in filter(None, (m.strip() for m in args.preload.split(","))):
        app.state.fastmedsam.pool.slot(model)
    # uvicorn's access log prints paths only (digests and ids, never file names or pixel values)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, timeout_keep_alive=30)
    return 0
