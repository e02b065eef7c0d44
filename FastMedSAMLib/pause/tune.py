"""Tuning with pausing: self-distillation of the paused path towards the unpaused model, one set of weights for
every knob.

The trainable parts act only on the paused path (pause = 0 never runs them): the per-block catch-up updates of
paused tokens (`heads.catchup`, first fitted by ridge regression in `train.py`) and, per block, a low-rank adapter
on the active tokens of a block that runs with paused tokens (`heads.adapters`, zero at first). Every step takes
one unlabelled training slice and a random knob, runs the paused encoder (the heads decide, not trained here) and
pulls its image embedding towards the unpaused model's (MSE relative to the embedding's variance). With
`mask_loss`, it also pulls the masks the decoder draws from the paused embedding, for random boxes on the slice,
towards the masks it draws from the plain one (BCE against the plain logits' probabilities: what the score sees,
where the embedding loss weighs every channel alike). The frozen encoder, the heads and the decoder are untouched.
Targets are the plain model's embeddings, cached on disk.
"""
from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.metrics import dice
from ..models.base import Frame
from ..models.litemedsam import LiteMedSAMAdapter
from ..refine.prompting import run_decoder
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
    mask_loss: float = 0.0  # weight of the mask term (0: embeddings only)
    boxes: int = 4  # random boxes per step for the mask term


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


def random_boxes(frame: Frame, count: int, rng: np.random.Generator) -> torch.Tensor:
    """(count, 4) boxes x0 y0 x1 y1 in the model frame, inside the image's part of it, 8 %–60 % of its side."""
    w, h = frame.resized_width, frame.resized_height
    sides = rng.uniform(0.08, 0.6, size=(count, 2)) * np.array([w, h])
    corners = rng.uniform(0, 1, size=(count, 2)) * (np.array([w, h]) - sides)
    return torch.from_numpy(np.concatenate([corners, corners + sides], axis=1).astype(np.float32))


def _masks(decoder: Tuple[torch.nn.Module, torch.nn.Module], embedding: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Low-res mask logits (B, 1, S, S) of the frozen decoder for `boxes` on one embedding."""
    logits, _ = run_decoder(*decoder, embedding.expand(len(boxes), -1, -1, -1), boxes=boxes)
    return logits


def _paused(runner: PausedTinyViT, heads: PauseHeads, tokens: torch.Tensor, knob: float) -> torch.Tensor:
    """The paused path's embedding of `tokens` (the encoder's front output) at `knob`."""
    embedding, _ = runner(torch.zeros(1, 3, 1, 1), decide=_decider(heads, heads.threshold(knob)), tokens=tokens)
    return embedding


def distill_loss(runner: PausedTinyViT, heads: PauseHeads, tokens: torch.Tensor, target: torch.Tensor,
                 knob: float, decoder: Optional[Tuple[torch.nn.Module, torch.nn.Module]] = None,
                 boxes: Optional[torch.Tensor] = None, mask_weight: float = 0.0) -> torch.Tensor:
    """Relative MSE of the paused embedding, plus `mask_weight` x the BCE of its masks for `boxes` against the
    plain embedding's mask probabilities (`decoder`: the frozen prompt encoder and mask decoder)."""
    embedding = _paused(runner, heads, tokens, knob)
    loss = F.mse_loss(embedding, target) / target.var()
    if mask_weight and decoder is not None and boxes is not None:
        with torch.no_grad():
            teacher = torch.sigmoid(_masks(decoder, target, boxes))
        loss = loss + mask_weight * F.binary_cross_entropy_with_logits(_masks(decoder, embedding, boxes), teacher)
    return loss


@torch.no_grad()
def validate(runner: PausedTinyViT, heads: PauseHeads, fronts: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
             decoder: Optional[Tuple[torch.nn.Module, torch.nn.Module]] = None,
             boxes: Sequence[torch.Tensor] = ()) -> Tuple[Dict[str, float], Optional[Dict[str, float]]]:
    """Per validation knob, from one paused forward of each slice: the embedding's relative MSE, and (with
    `decoder`) the mean Dice between the masks of the paused and the plain embedding for the slice's fixed `boxes`."""
    losses: Dict[str, float] = {}
    agreement: Optional[Dict[str, float]] = None if decoder is None else {}
    for knob in VALID_KNOBS:
        errors, scores = [], []
        for i, (front, target) in enumerate(zip(fronts, targets)):
            embedding = _paused(runner, heads, front, knob)
            errors.append(float(F.mse_loss(embedding, target) / target.var()))
            if agreement is not None:
                paused, plain = _masks(decoder, embedding, boxes[i]) > 0, _masks(decoder, target, boxes[i]) > 0
                scores += [dice(a.numpy(), b.numpy()) for a, b in zip(paused, plain)]
        losses[f"{knob:g}"] = round(float(np.mean(errors)), 5)
        if agreement is not None:
            agreement[f"{knob:g}"] = round(float(np.mean(scores)), 4)
    return losses, agreement


def tune(encoder, heads_in: PauseHeads, rgbs: Sequence[np.ndarray], config: TuneConfig, cache: Path,
         progress: bool = True, decoder: Optional[Tuple[torch.nn.Module, torch.nn.Module]] = None) -> Tuple[PauseHeads, Dict]:
    """A tuned copy of `heads_in` (catch-ups + new adapters) and a report (validation loss before/after; with
    `decoder`, the frozen (prompt encoder, mask decoder), also the validation masks' agreement, and the mask term
    when `config.mask_loss`)."""
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
    prepared = [LiteMedSAMAdapter().preprocess(rgb) for rgb in rgbs]
    tensors, frames = [t for t, _ in prepared], [f for _, f in prepared]
    targets = plain_targets(runner, tensors, cache)
    with torch.no_grad():
        fronts = [runner.front(t) for t in tensors]
    n_train = len(tensors) - config.valid_slices
    valid = (fronts[n_train:], targets[n_train:])
    valid_boxes = [random_boxes(f, 8, np.random.default_rng(config.seed + 1 + i)) for i, f in enumerate(frames[n_train:])]
    if decoder is not None:
        for module in decoder:
            module.eval().requires_grad_(False)
    before, agreement_before = validate(runner, heads, *valid, decoder, valid_boxes)
    optimiser = torch.optim.Adam(trainable, lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, config.steps)
    losses = []
    for step in range(config.steps):
        i = int(rng.integers(n_train))
        knob = float(rng.uniform(config.knob_low, config.knob_high))
        boxes = random_boxes(frames[i], config.boxes, rng) if config.mask_loss else None
        loss = distill_loss(runner, heads, fronts[i], targets[i], knob, decoder, boxes, config.mask_loss)
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
    after, agreement_after = validate(runner, heads, *valid, decoder, valid_boxes)
    report = {"config": asdict(config), "valid_loss_before": before, "valid_loss_after": after,
              "train_loss_first_last_20": [float(np.mean(losses[:20])), float(np.mean(losses[-20:]))],
              "seconds": round(time.perf_counter() - started, 1)}
    if decoder is not None:
        report["valid_mask_dice_before"] = agreement_before
        report["valid_mask_dice_after"] = agreement_after
    return heads.eval(), report
