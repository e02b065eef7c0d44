"""`fastmedsam bench --model litemedsam --out bench.json [--models a,b] [--pause 0,0.25] [--repeats 5]`"""
from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_device, add_manifest, add_pause, emit, name_list, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time models through the Session (cold encode, cached click, 3D propagation, memory)",
        description=(
            "Benchmark one or more models (and token-pause knob values) side by side in one process on real CT: "
            "cold encode of a slice, a cached click, 3D propagation over the DeepLesion volumes; medians over "
            "--repeats. Models whose weights are not cached are skipped with a note."
        ),
    )
    models = p.add_mutually_exclusive_group()
    models.add_argument("--model", dest="models", type=lambda t: [t], help="one registry model (default litemedsam)")
    models.add_argument("--models", dest="models", type=name_list, help="comma-separated registry models")
    add_pause(p, several=True)
    p.add_argument("--repeats", type=positive_int, default=5, help="repeats; medians are reported (default 5)")
    p.add_argument(
        "--weights", choices=("official", "recipe"), default="official",
        help="official: the cached verified weights; recipe: deterministic parity weights (speed only)",
    )
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's own)")
    add_device(p)
    add_manifest(p, "the CT volumes")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    remote = p.add_argument_group("remote", "measure a FastMedSAM server beside the local Session (bench_remote)")
    remote.add_argument("--remote", metavar="URL", help="server URL, e.g. http://127.0.0.1:8765 (token: FASTMEDSAM_TOKEN)")
    remote.add_argument("--clients", type=positive_int, default=8, help="concurrent clients of the load check (default 8)")
    remote.add_argument("--clicks", type=positive_int, default=50, help="cached clicks per client (default 50)")
    p.set_defaults(func=run, models=None)


def run(args: argparse.Namespace) -> int:
    if args.remote:
        import os

        from ..evaluation.bench_remote import bench_remote
        from ..evaluation.bench_remote import markdown as remote_markdown

        report = bench_remote(args.remote, os.environ.get("FASTMEDSAM_TOKEN"), args.manifest.parent,
                              model=(args.models or ["litemedsam"])[0], clicks=args.clicks, clients=args.clients,
                              device=args.device)
        return emit(report, remote_markdown(report), args.out)
    from ..evaluation.bench import bench, markdown

    report = bench(
        args.models or ["litemedsam"],
        args.manifest,
        pauses=args.pause,
        repeats=args.repeats,
        weights=args.weights,
        device=args.device,
        threads=args.threads,
        progress=not args.quiet,
    )
    return emit(report, markdown(report), args.out)
