"""`fastmedsam bench --model litemedsam --out bench.json [--models a,b] [--pause 0,0.25] [--runtimes all] [--crops none,3]
[--chart bench.png] [--repeats 5]`"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from .arguments import add_device, add_manifest, add_pause, add_runtime, emit, name_list, positive_int


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
    add_runtime(p, several=True)
    p.add_argument("--crops", type=_crop_list, default=[None], metavar="none,F,...",
                   help="LiteMedSAM prompt-crop factors side by side (none = whole slices; default none)")
    p.add_argument("--repeats", type=positive_int, default=5, help="repeats; medians are reported (default 5)")
    p.add_argument(
        "--weights", choices=("official", "recipe"), default="official",
        help="official: the cached verified weights; recipe: deterministic parity weights (speed only)",
    )
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's own)")
    add_device(p)
    add_manifest(p, "the CT volumes")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.add_argument("--chart", type=Path, help="draw the side-by-side chart into this PNG")
    p.add_argument("--prefetch-timeline", action="store_true",
                   help="instead: prompt latency with / without background prefetch on the left-atrium MR, per runtime")
    p.add_argument("--forward", action="store_true",
                   help="instead: the networks alone (encoder, decoder, CUDA-graph decode) per encoder precision")
    p.add_argument("--memory", action="store_true",
                   help="instead: peak RSS of a session on a 512×512×300 CT with its embedding cache full, per runtime, "
                        "each in a fresh process")
    p.add_argument("--agreement", action="store_true",
                   help="instead: each runtime's masks and logits against torch-exact on real 2D images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    remote = p.add_argument_group("remote", "measure a FastMedSAM server beside the local Session (bench_remote)")
    remote.add_argument("--remote", metavar="URL", help="server URL, e.g. http://127.0.0.1:8765 (token: FASTMEDSAM_TOKEN)")
    remote.add_argument("--clients", type=positive_int, default=8, help="concurrent clients of the load check (default 8)")
    remote.add_argument("--clicks", type=positive_int, default=50, help="cached clicks per client (default 50)")
    remote.add_argument("--sessions", type=positive_int, default=100,
                        help="sessions held open at once, each on a new image, for the memory figure (default 100)")
    p.set_defaults(func=run, models=None)


def run(args: argparse.Namespace) -> int:
    if args.remote:
        import os

        from ..evaluation.bench_remote import bench_remote
        from ..evaluation.bench_remote import markdown as remote_markdown

        if args.threads:  # the local Session's side of the comparison
            import torch

            torch.set_num_threads(args.threads)
        report = bench_remote(args.remote, os.environ.get("FASTMEDSAM_TOKEN"), args.manifest.parent,
                              model=(args.models or ["litemedsam"])[0], clicks=args.clicks, clients=args.clients,
                              device=args.device, sessions=args.sessions)
        return emit(report, remote_markdown(report), args.out)
    from ..evaluation.bench import bench, markdown

    if args.prefetch_timeline:
        return _timelines(args)
    if args.forward:
        from ..evaluation.bench_forward import bench_forward
        from ..evaluation.bench_forward import markdown as forward_markdown

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        report = bench_forward(args.models or ["litemedsam"], device=args.device, repeats=args.repeats,
                               parity_dir=args.manifest.resolve().parent.parent / "parity")
        return emit(report, forward_markdown(report), args.out)
    if args.memory:
        from ..evaluation.bench_memory import bench_memory, memory_markdown

        report = bench_memory(args.manifest, args.runtimes, device=args.device, threads=args.threads)
        return emit(report, memory_markdown(report), args.out)
    if args.agreement:
        from ..evaluation.runtime_agreement import agreement_markdown, runtime_agreement

        report = runtime_agreement(args.manifest, args.runtimes, model=(args.models or ["litemedsam"])[0],
                                   device=args.device)
        return emit(report, agreement_markdown(report), args.out)

    report = bench(
        args.models or ["litemedsam"],
        args.manifest,
        pauses=args.pause,
        runtimes=args.runtimes,
        crops=args.crops,
        repeats=args.repeats,
        weights=args.weights,
        device=args.device,
        threads=args.threads,
        progress=not args.quiet,
    )
    if args.chart:
        from ..evaluation.bench_chart import draw_chart

        draw_chart(report, args.chart)
    return emit(report, markdown(report), args.out)


def _timelines(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.prefetch_timeline import prefetch_timeline, timeline_markdown

    if args.threads:
        torch.set_num_threads(args.threads)
    reports = [prefetch_timeline(args.manifest, runtime, args.device) for runtime in args.runtimes]
    return emit({"prefetch_timelines": reports}, "\n\n".join(timeline_markdown(r) for r in reports), args.out)


def _crop_list(text: str) -> List[Optional[float]]:
    """`none,3` -> [None, 3.0]."""
    try:
        return [None if v.lower() == "none" else float(v) for v in name_list(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"crop factors are numbers or none, got {text!r}") from exc
