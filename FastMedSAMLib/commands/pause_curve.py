"""`fastmedsam pause-curve --eval eval.json [eval_3d.json] [--pause 0.1,0.25,0.5,0.75,1] [--repeats 3] --out out/pause/litemedsam`"""
from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_manifest, pause_list, positive_int

OUTPUTS = (".md", ".json", ".png")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pause-curve",
        help="speed/accuracy curve of the token-paused LiteMedSAM encoder (table, JSON, PNG plot)",
        description=(
            "Time the plain LiteMedSAM encoder (pause 0), the paused code path with nothing paused and every "
            "--pause knob, interleaved in one process on one slice per dataset of the evaluation split (images the "
            "pause heads and the knob never saw); speed-ups are over the fastest unpaused variant. DSC/NSD per knob "
            "and dataset come from `fastmedsam eval --split evaluation --pause 0,...` report(s) (pause 0 needed). "
            "Writes <out>.md, <out>.json and <out>.png, prints the tables and the PNG path."
        ),
    )
    p.add_argument("--eval", type=Path, required=True, nargs="+", metavar="EVAL_JSON",
                   help="JSON(s) of `fastmedsam eval --split evaluation --pause 0,...` giving DSC/NSD per knob "
                        "(several: their datasets are merged)")
    p.add_argument("--pause", type=pause_list, default=[0.1, 0.25, 0.5, 0.75, 1.0],
                   help="knob values in [0, 1] to time (default 0.1,0.25,0.5,0.75,1; pause 0 is always timed)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timing repeats; medians are reported (default 3)")
    p.add_argument("--slices", type=positive_int, help="time on the first N evaluation slices only (default: all)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's own)")
    add_manifest(p, "the slices")
    p.add_argument("--out", type=Path, default=Path("out/pause/litemedsam"),
                   help="prefix of the .md/.json/.png outputs (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no per-repeat timings on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pause.report import accuracy, build, load_eval, measure_speed, write

    acc = accuracy(load_eval(args.eval))  # before the timing: a bad eval file fails at once
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    speed = measure_speed(args.pause, args.manifest, args.repeats, slices=args.slices, progress=not args.quiet)
    prefix = args.out.with_suffix("") if args.out.suffix in OUTPUTS else args.out
    text, paths = write(build(speed, acc, args.eval), prefix)
    print(text)
    print(paths["png"])
    return 0
