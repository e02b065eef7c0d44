"""`fastmedsam calibrate-pause --out models/litemedsam-pause-heads.pt [--split-out models/litemedsam-pause-split.json]`"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, Optional

from .arguments import add_manifest, positive_int
from .train_pause import _commit


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate-pause",
        help="refit the pause knob on held-apart calibration images; report the paused fraction per knob",
        description=(
            "Split the development images by scan into the heads' training images, calibration and evaluation "
            "images (see FastMedSAMLib/pause/split.py), refit the knob -> threshold table of the committed "
            "LiteMedSAM pause heads on real paused forwards of the calibration images (weights untouched), and "
            "report the realised paused fraction per knob on training, calibration and evaluation images, before "
            "and after. Writes the heads file, the split JSON and a JSON report."
        ),
    )
    add_manifest(p)
    p.add_argument("--out", type=Path, required=True, help="heads file to write (models/litemedsam-pause-heads.pt)")
    p.add_argument("--heads", type=Path,
                   help="heads file to recalibrate (default: the committed one, sha256-verified), e.g. from tune-pause")
    p.add_argument("--split-out", type=Path, default=Path("models/litemedsam-pause-split.json"),
                   help="where to record the split (default %(default)s)")
    p.add_argument("--train-slices", type=positive_int, default=12,
                   help="training slices to measure the knob on (default 12)")
    p.add_argument("--no-before", action="store_true",
                   help="skip measuring the old table (e.g. for freshly tuned heads, where it means little)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's own)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models import load_model
    from ..pause import load_pause_heads
    from ..pause.calibrate import (
        calibrate,
        fractions_per_knob,
        knob_error,
        per_folder,
        split_slices,
        to_tensors,
        training_subset,
    )
    from ..pause.heads import load_heads
    from ..pause.split import check_disjoint, make_split, save_split, trained_images
    from ..weights.store import sha256_file

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    commit = _commit()  # the code that runs, read before anything can change the checkout
    net = load_model("litemedsam")
    heads = load_pause_heads("litemedsam") if args.heads is None else load_heads(args.heads, None, "litemedsam")
    meta = dict(heads.meta)
    sources = meta["slice_sources"]
    split = make_split(args.manifest, trained_images(sources))
    check_disjoint(split)
    slices = {
        "training": training_subset(args.manifest, sources, args.train_slices),
        "calibration": split_slices(args.manifest, split["calibration"]),
        "evaluation": split_slices(args.manifest, split["evaluation"]),
    }
    tensors = {name: to_tensors(s) for name, s in slices.items()}
    before = None if args.no_before else fractions_per_knob(net.image_encoder, heads, tensors)
    curve = calibrate(net.image_encoder, heads, tensors["calibration"])
    after = fractions_per_knob(net.image_encoder, heads, tensors)
    report = {
        "commit": commit, "torch": str(torch.__version__), "threads": torch.get_num_threads(),
        "manifest_sha256": sha256_file(args.manifest),
        "slices": {name: per_folder(s) for name, s in slices.items()},
        "curve": curve, "before": before, "after": after,
        "knob_error_before": None if before is None else {k: round(knob_error(v), 4) for k, v in before.items()},
        "knob_error_after": {k: round(knob_error(v), 4) for k, v in after.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    meta["calibration"] = report
    sha256 = heads.save(args.out, meta)
    save_split(split, args.split_out, {"rule": "FastMedSAMLib/pause/split.py", "heads_training": "meta.slice_sources"})
    args.out.with_suffix(".calibration.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(table(before, after))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {sha256}), {args.split_out} in "
          f"{report['seconds']} s")
    return 0


def table(before: Optional[Dict], after: Dict) -> str:
    """Realised paused fraction (mean over images, min-max) per knob and set, old table vs refitted."""
    sides = (after,) if before is None else (before, after)
    names = ("after",) if before is None else ("before", "after")
    lines = ["| knob | " + " | ".join(f"{s} {n}" for s in after for n in names) + " |",
             "|---|" + "---|" * len(after) * len(sides)]
    for knob in next(iter(after.values())):
        cells = []
        for name in after:
            for side in sides:
                v = side[name][knob]
                cells.append(f"{v['mean']:.2f} ({v['min']:.2f}–{v['max']:.2f})")
        lines.append(f"| {knob} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
