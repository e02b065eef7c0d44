"""`fastmedsam tune-pause --out out/pause/tuned/litemedsam-pause-heads.pt [--steps 200] [--rank 8]`"""
from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_manifest, positive_int
from .train_pause import _commit


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune-pause",
        help="tune the paused path (catch-ups + low-rank adapters) by self-distillation from the plain model",
        description=(
            "Self-distillation of the token-paused LiteMedSAM encoder towards the plain one at a random knob per "
            "step, on the pause heads' own unlabelled training slices (never the calibration or evaluation "
            "images): trains the paused tokens' catch-ups and a low-rank adapter per block for the active tokens. "
            "pause=0 never runs them. Writes a heads file (recalibrate it with `calibrate-pause --heads`)."
        ),
    )
    add_manifest(p)
    p.add_argument("--out", type=Path, required=True, help="heads file to write")
    p.add_argument("--steps", type=positive_int, default=200, help="optimisation steps (default 200)")
    p.add_argument("--rank", type=positive_int, default=8, help="adapter rank (default 8)")
    p.add_argument("--mask-loss", type=float, default=0.0,
                   help="weight of the mask term: the decoder's masks for random boxes from the paused embedding "
                        "pulled towards the plain one's (default 0: embeddings only)")
    p.add_argument("--boxes", type=positive_int, default=4, help="random boxes per step for the mask term (default 4)")
    p.add_argument("--cache", type=Path,
                   help="where the plain model's embeddings are cached (default: <user cache>/pause-tune, "
                        "honouring FASTMEDSAM_CACHE)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's own)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models import load_model
    from ..pause import load_pause_heads
    from ..pause.calibrate import training_subset
    from ..pause.tune import TuneConfig, tune
    from ..weights.store import cache_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TuneConfig(steps=args.steps, rank=args.rank, mask_loss=args.mask_loss, boxes=args.boxes)
    commit = _commit()  # the code that runs, read before anything can change the checkout
    net = load_model("litemedsam")
    heads = load_pause_heads("litemedsam")
    sources = heads.meta["slice_sources"]
    slices = training_subset(args.manifest, sources, config.train_slices + config.valid_slices, config.seed)
    tuned, report = tune(net.image_encoder, heads, [rgb for _, _, rgb in slices], config, args.cache or cache_dir() / "pause-tune",
                         progress=not args.quiet, decoder=(net.prompt_encoder, net.mask_decoder))
    report.update({"commit": commit, "torch": str(torch.__version__), "threads": torch.get_num_threads(),
                   "slices": [source for _, source, _ in slices]})
    meta = {k: v for k, v in heads.meta.items() if k != "calibration"}
    sha256 = tuned.save(args.out, {**meta, "tuning": report})
    print(f"validation loss (relative MSE of the embedding) per knob: before {report['valid_loss_before']}, "
          f"after {report['valid_loss_after']}")
    print(f"validation masks' Dice to the plain model's (8 random boxes a slice) per knob: before "
          f"{report['valid_mask_dice_before']}, after {report['valid_mask_dice_after']}")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {sha256}) in {report['seconds']} s")
    return 0
