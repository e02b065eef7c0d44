"""`fastmedsam train-refine --manifest M --out models/litemedsam-refine.pt [--seed 0]`"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import add_manifest, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-refine",
        help="fine-tune LiteMedSAM's prompt encoder + mask decoder for clicks and mask prompts (CPU, minutes)",
        description=(
            "Encodes the training cases of the manifest's train/validation split once with the frozen LiteMedSAM "
            "encoder (cached in the user cache), then fine-tunes the prompt encoder and mask decoder with simulated "
            "interaction (boxes, clicks from the error region, the previous mask fed back). Writes the float16 "
            "weights, a JSON report and a markdown note beside them."
        ),
    )
    add_manifest(p)
    p.add_argument("--out", type=Path, required=True, help="weights file to write, e.g. models/litemedsam-refine.pt")
    p.add_argument("--seed", type=int, default=0, help="seed for crops, sampling, clicks and training (default 0)")
    p.add_argument("--steps", type=positive_int, default=120, help="optimiser steps (default 120)")
    p.add_argument("--batch", type=positive_int, default=4, help="objects per step (default 4)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: refine.train.TrainConfig's, 1e-4)")
    p.add_argument("--click-loss", type=float, default=0.0,
                   help="weight of a BCE on the pixels the clicks point at, see --click-target (default 0: off)")
    p.add_argument("--keep-loss", type=float, default=0.0,
                   help="weight of a BCE on the pixels the previous round had right, so that a click leaves them "
                        "alone (default 0: off)")
    p.add_argument("--click-target", choices=("disk", "error"), default="disk",
                   help="the click loss's pixels: disks around the clicks (default), or the connected error region "
                        "each round's new click was drawn from")
    p.add_argument("--every-round", action="store_true",
                   help="a loss on every round of an episode (SAM's iterative training), not on the last one only")
    p.add_argument("--rule-in-loop", action="store_true",
                   help="feed each click round's mask back as inference does: the previous mask with the click "
                        "rule's edit (refine/focus.py), not the decoder's whole answer")
    p.add_argument("--pair", action="store_true",
                   help="train a decode without clicks as inference runs it: averaged with LiteMedSAM's own "
                        "(frozen) decoder's logits for the box (refine/engine.py)")
    p.add_argument("--slices-per-volume", type=positive_int,
                   help="axial slices taken from each training volume (default: refine.data's, 12)")
    p.add_argument("--crops-per-image", type=positive_int,
                   help="training variants of each 2D image, itself and random crops (default: refine.data's, 4)")
    p.add_argument("--init", type=Path, help="start from these fine-tuned weights (a litemedsam-refine file) "
                   "instead of LiteMedSAM's prompt encoder and decoder")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import WeightsError
    from ..io.manifest import read_manifest
    from ..models import load_model
    from ..refine.data import build_cache, load_records
    from ..refine.split import split
    from ..refine.train import TrainConfig, train
    from ..refine.weights import save
    from ..weights.store import sha256_file
    from .train_pause import _commit

    torch.set_num_threads(1)
    commit = _commit()  # the code that runs, read before anything can change the checkout
    log = (lambda *a: None) if args.quiet else print
    sampling = {k: v for k, v in (("slices", args.slices_per_volume), ("crops", args.crops_per_image)) if v is not None}
    paths = build_cache(args.manifest, args.seed, log=log, **sampling)
    records = load_records(paths)
    net = load_model("litemedsam")
    if args.init:
        state = {k: v.float() for k, v in torch.load(args.init, weights_only=True).items()}
        missing, unexpected = net.load_state_dict(state, strict=False)  # the image encoder stays LiteMedSAM's
        if unexpected or any(not k.startswith("image_encoder.") for k in missing):
            raise WeightsError(f"{args.init} is not a litemedsam-refine prompt encoder + decoder file")
    config = TrainConfig(seed=args.seed, steps=args.steps, batch=args.batch, click_loss=args.click_loss,
                         keep_loss=args.keep_loss, click_target=args.click_target, every_round=args.every_round,
                         rule_in_loop=args.rule_in_loop, pair=args.pair,
                         **({} if args.lr is None else {"lr": args.lr}))
    report = train(net, records, config, progress=not args.quiet, log=log,
                   base_net=load_model("litemedsam") if args.pair else None)
    sha256 = save(net, args.out)
    report.update({"commit": commit, "torch": str(torch.__version__), "threads": torch.get_num_threads(),
                   "manifest_sha256": sha256_file(args.manifest), "split": split(read_manifest(args.manifest)),
                   "sha256": sha256, "size": args.out.stat().st_size})
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    note = args.out.with_suffix(".md")
    note.write_text(_note(args, report), encoding="utf-8")
    print(f"wrote {args.out} ({report['size']} bytes, sha256 {sha256}), {note} in {report['seconds']} s")
    return 0


def _note(args: argparse.Namespace, report: dict) -> str:
    config = report["config"]
    sources: dict = {}
    for source in report["sources"]:
        name = source.split("/")[0]
        sources[name] = sources.get(name, 0) + 1
    data = "\n".join(f"| {name} | {count} |" for name, count in sorted(sources.items()))
    sides = report["split"]
    validation = ", ".join(f"`{k}`" for k, v in sorted(sides.items()) if v == "validation")
    curve = "\n".join(f"| {h['step']} | {h['seconds']} | {h['loss']:.4f} | {h['iou']:.3f} |" for h in report["history"])
    init = ((f" --click-loss {args.click_loss}" if args.click_loss else "")
            + (f" --keep-loss {args.keep_loss}" if args.keep_loss else "")
            + (f" --click-target {args.click_target}" if args.click_target != "disk" else "")
            + (" --every-round" if args.every_round else "")
            + (" --rule-in-loop" if args.rule_in_loop else "")
            + (" --pair" if args.pair else "")
            + (f" --slices-per-volume {args.slices_per_volume}" if args.slices_per_volume else "")
            + (f" --crops-per-image {args.crops_per_image}" if args.crops_per_image else "")
            + (f" --init {args.init}" if args.init else ""))
    return f"""# {args.out.name}

Prompt encoder + mask decoder of `litemedsam-refine`, fine-tuned from LiteMedSAM's by `fastmedsam train-refine
--manifest <shared>/data/manifest.json --out {args.out} --seed {args.seed} --steps {args.steps} --batch {args.batch} --lr {config['lr']}{init}`
(FastMedSAMLib/refine/train.py) at commit `{report['commit']}`, torch {report['torch']}, {report['threads']} thread(s),
{report['precision']}, in {report['seconds']} s of training (embeddings cached beforehand); manifest sha256
`{report['manifest_sha256']}`. The image encoder is LiteMedSAM's, unchanged (not in this file).

- size {report['size']} bytes (float16), sha256 `{report['sha256']}`
- {config['steps']} AdamW steps (lr {config['lr']} cosine to a tenth, weight decay {config['weight_decay']}), batch {config['batch']},
  seed {config['seed']}; first prompt: jittered box {config['p_box']}, one include click {config['p_point']}, neighbouring slice's
  mask + its box (3D slices) the rest; then 0 (p={config['p_first_only']}) or 1..{config['max_rounds']} click rounds
  (clicks from the error region, previous mask fed back, {config['p_mask_only']} mask-only); {_losses_text(config)}
- {report['slices']} training slices, {report['objects']} objects ({report['objects_with_neighbours']} with a neighbouring-slice mask)

Split by case (FastMedSAMLib/refine/split.py; every figure reported for this model comes from validation cases):
validation = {validation}; everything else used (fundus vessels and the MNI tissue maps excepted) trains.

| training source | slices |
|---|---|
{data}

| step | seconds | loss | IoU (last round) |
|---|---|---|---|
{curve}
"""


def _losses_text(config: dict) -> str:
    text = f"loss Dice + BCE + IoU-MSE on {'every round' if config['every_round'] else 'the last round'}"
    if config["click_loss"]:
        pixels = ("the error region each new click was drawn from" if config["click_target"] == "error"
                  else f"{config['click_radius_px']} px disks around the clicks")
        text += f", + {config['click_loss']} x BCE on {pixels}"
    if config["keep_loss"]:
        text += f", + {config['keep_loss']} x BCE on the pixels the previous round had right"
    return text
