"""`fastmedsam train-pause --model litemedsam --manifest M --out models/litemedsam-pause-heads.pt [--seed 0]`"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from .arguments import add_manifest, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-pause",
        help="train the token-pause heads of an encoder without labels (minutes on a CPU)",
        description=(
            "Label-free training of the token-pause heads: the frozen model teaches itself which tokens are "
            "settled. Unlabelled slices come from the manifest, away from what the box-protocol reference table "
            "scores. Writes the heads file and a JSON report beside it (data, settings, fit, commit, sha256)."
        ),
    )
    p.add_argument("--model", default="litemedsam", choices=["litemedsam"], help="encoder to train heads for")
    add_manifest(p)
    p.add_argument("--out", type=Path, required=True, help="heads file to write, e.g. models/litemedsam-pause-heads.pt")
    p.add_argument("--seed", type=int, default=0, help="seed for slice choice, augmentation, sampling and training")
    p.add_argument("--slices", type=positive_int, default=200, help="training slices (default 200)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models import load_model
    from ..pause.data import training_slices
    from ..pause.train import TrainConfig, train
    from ..weights.store import sha256_file

    torch.manual_seed(args.seed)
    config = TrainConfig(seed=args.seed, slices=args.slices)
    net = load_model(args.model)
    slices = training_slices(args.manifest, config.slices, config.seed)
    heads, report = train(net.image_encoder, slices, config, progress=not args.quiet)
    report.update({"model": args.model, "commit": _commit(), "torch": str(torch.__version__),
                   "threads": torch.get_num_threads(), "manifest_sha256": sha256_file(args.manifest),
                   "slice_sources": [s.source for s in slices]})
    sha256 = heads.save(args.out, report)
    size = args.out.stat().st_size
    note = args.out.with_suffix(".md")
    note.write_text(_note(args, report, sha256, size), encoding="utf-8")
    print(f"wrote {args.out} ({size} bytes, sha256 {sha256}) and {note} in {report['seconds']} s")
    return 0


def _note(args: argparse.Namespace, report: dict, sha256: str, size: int) -> str:
    """The markdown note committed beside the heads file."""
    config = report["config"]
    data = "\n".join(f"| {name} | {count} |" for name, count in report["data"].items())
    fit = "\n".join(
        f"| {depth} | {v['target_median']:.3f} | {v['target_std']:.3f} | {v['train_rmse']:.3f} | {v['valid_rmse']:.3f} |"
        for depth, v in report["heads"].items()
    )
    return f"""# {args.out.name}

Token-pause heads for `{args.model}`, trained label-free by `fastmedsam train-pause --model {args.model}
--manifest <shared>/data/manifest.json --out {args.out} --seed {args.seed} --slices {args.slices}`
(FastMedSAMLib/pause/train.py) at commit `{report['commit']}`, torch {report['torch']}, {report['threads']} thread(s),
in {report['seconds']} s; manifest sha256 `{report['manifest_sha256']}`.

- size {size} bytes, sha256 `{sha256}`
- heads at blocks {', '.join(map(str, config['depths']))} (LayerNorm -> Linear -> GELU -> Linear, hidden {config['hidden']}),
  one linear catch-up pair per block, knob table of {101} thresholds; weights rounded to float16 as fitted, stored so
- catch-ups fitted on the first {config['catchup_slices']} slices; {config['samples_per_slice']} sampled tokens per slice
  and head; Adam lr {config['lr']}, {config['epochs']} epochs, batch {config['batch']}, seed {config['seed']}
- mean per-channel variance of the final tokens: {report['final_token_variance']:.5f}

Training slices ({sum(report['data'].values())}; none is scored by the reference table; labels only used to
leave out the slices a 3D target covers; the full list is in the file's `meta.slice_sources`):

| source | slices |
|---|---|
{data}

Fit (target: log10 relative squared error of a token's final features if it paused at that block):

| block | target median | target std | train RMSE | valid RMSE |
|---|---|---|---|---|
{fit}
"""
