"""Tuning with pausing: self-distillation of the paused path towards the unpaused model, one set of weights for
every knob.

The trainable parts act only on the paused path (pause = 0 never runs them): the per-block catch-up updates of
paused tokens (`heads.catchup`, first fitted by ridge regression in `train.py`) and, per block, a low-rank adapter
on the active tokens of a block that runs with paused tokens (`heads.adapters`, zero at first). Every step takes
one unlabelled training slice and a random knob, runs the paused encoder (the heads decide, not trained here) and
pulls its image embedding towards the unpaused model's (MSE relative to the embedding's variance). The frozen
encoder, the heads and the decoder are untouched. Targets are the plain model's embeddings, cached on disk.
"""
from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..models.litemedsam import LiteMedSAMAdapter
from .heads import PauseHeads
from .tinyvit_paused import PausedTinyViT
from .train import to_storage_precision

VALID_KNOBS = (0.25, 0.5, 0.75)


@dataclass
class TuneConfig:
    seed: int = 0
    train_slices: int = 60
    valid_slices: int = 8
    steps: int = 200
    lr: float = 5e-4
    rank: int = 8
    knob_low: float = 0.2
    knob_high: float = 1.0


def _key(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()[:24]


@torch.no_grad()
def plain_targets(runner: PausedTinyViT, tensors: Sequence[torch.Tensor], cache: Path) -> List[torch.Tensor]:
    """The unpaused embedding of each input (the fused path with nothing paused: the plain model's function),
    cached on disk under `cache` by the input's sha256."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for tensor in tensors:
        path = cache / f"{_key(tensor)}.pt"
        if path.is_file():
            out.append(torch.load(path, weights_only=True))
            continue
        embedding, _ = runner(tensor)
        torch.save(embedding, path)
        out.append(embedding)
    return out


def _decider(heads: PauseHeads, threshold: float):
    def decide(depth: int, features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        head = heads.head_at(depth)
        with torch.no_grad():
            if head is None:
                return torch.zeros(features.shape[0], dtype=torch.bool)
            return head(features) < threshold
    return decide


def distill_loss(runner: PausedTinyViT, heads: PauseHeads, tokens: torch.Tensor, target: torch.Tensor,
                 knob: float) -> torch.Tensor:
    embedding, _ = runner(torch.zeros(1, 3, 1, 1), decide=_decider(heads, heads.threshold(knob)), tokens=tokens)
    return F.mse_loss(embedding, target) / target.var()


@torch.no_grad()
def validate(runner: PausedTinyViT, heads: PauseHeads, fronts: Sequence[torch.Tensor],
             targets: Sequence[torch.Tensor]) -> Dict[str, float]:
    return {f"{k:g}": round(float(np.mean([float(distill_loss(runner, heads, f, t, k))
                                           for f, t in zip(fronts, targets)])), 5) for k in VALID_KNOBS}


def tune(encoder, heads_in: PauseHeads, rgbs: Sequence[np.ndarray], config: TuneConfig, cache: Path,
         progress: bool = True) -> Tuple[PauseHeads, Dict]:
    """A tuned copy of `heads_in` (catch-ups + new adapters) and a report (validation loss before/after)."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    heads = copy.deepcopy(heads_in)
    heads.add_adapters(config.rank)
    runner = PausedTinyViT(encoder, heads.catchup, adapters=heads.adapters).eval()
    for parameter in runner.parameters():
        parameter.requires_grad_(False)
    trainable = list(heads.catchup.parameters()) + list(heads.adapters.parameters())
    for parameter in trainable:
        parameter.requires_grad_(True)
    tensors = [LiteMedSAMAdapter().preprocess(rgb)[0] for rgb in rgbs]
    targets = plain_targets(runner, tensors, cache)
    with torch.no_grad():
        fronts = [runner.front(t) for t in tensors]
    n_train = len(tensors) - config.valid_slices
    valid = (fronts[n_train:], targets[n_train:])
    before = validate(runner, heads, *valid)
    optimiser = torch.optim.Adam(trainable, lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, config.steps)
    losses = []
    for step in range(config.steps):
        i = int(rng.integers(n_train))
        knob = float(rng.uniform(config.knob_low, config.knob_high))
        loss = distill_loss(runner, heads, fronts[i], targets[i], knob)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress and (step + 1) % 20 == 0:
            print(f"tune: step {step + 1}/{config.steps}: loss {np.mean(losses[-20:]):.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    for parameter in trainable:
        parameter.requires_grad_(False)
    to_storage_precision(heads.catchup)
    to_storage_precision(heads.adapters)
    after = validate(runner, heads, *valid)
    report = {"config": asdict(config), "valid_loss_before": before, "valid_loss_after": after,
              "train_loss_first_last_20": [float(np.mean(losses[:20])), float(np.mean(losses[-20:]))],
              "seconds": round(time.perf_counter() - started, 1)}
    return heads.eval(), report
