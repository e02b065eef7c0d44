"""Fine-tune LiteMedSAM's prompt encoder + mask decoder for refinement, on cached embeddings (the image encoder
stays frozen and never runs here).

Each step simulates one interaction episode for a batch of objects (SAM / RITM style):
* first prompt: a jittered box (half the steps), one include click (a quarter), or, for slices of 3D volumes, the
  same object's mask on a neighbouring slice as dense prompt with that mask's box (a quarter: what mask-prompted
  propagation does);
* then 0 to `max_rounds` rounds: each adds one click from the error region (half the time at the deepest point of
  the largest error component, as the evaluation clicks, else uniformly in the error) and feeds the binarised
  prediction back as dense prompt; `mask_only` of the rounds add no click;
* the loss (Dice + BCE on the 256 frame, + MSE of the predicted IoU) is taken on the last round only, or with
  `every_round` on every round (the prediction fed back is detached, as in SAM's iterative training), plus, with
  `click_loss`, a BCE on the pixels the clicks point at (`click_target` "disk": disks around the episode's clicks;
  "error": the connected error region the round's new click was drawn from, which the click asks to fix), and,
  with `keep_loss`, a BCE on the pixels the previous round had right (a click must not break them); with
  `rule_in_loop`, each click round's mask is fed back as inference feeds it back (the previous mask with the click
  rule's edit, `focus.local_edit`), not the decoder's whole answer; with `pair`, a decode without clicks (a box,
  a mask with its box) is trained as inference runs it: its logits averaged with LiteMedSAM's frozen decoder's for
  the box (`engine.BOX_DECODER_SHARE`), so the fine-tuned decoder learns what to add to it.
A third of the steps stop after the first prompt, so box-only results are trained all along. Fixed seed and one
thread: the same cache and settings give the same weights."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..prompts import Point
from ..runtime.device import native_bf16
from .clicks import deepest_error_click, first_click, random_error_click
from .data import Record
from .engine import BOX_DECODER_SHARE
from .focus import RULE_2D, local_edit
from .prompting import mask_prompt, run_decoder

PAD = -1
MODES = ("box", "point", "neighbour")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 120
    batch: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.01
    max_rounds: int = 4
    p_first_only: float = 0.3
    p_box: float = 0.5
    p_point: float = 0.25  # the rest: neighbour-slice mask + its box
    p_mask_only: float = 0.15
    box_jitter: float = 0.1  # of the box side, per coordinate, at most `box_jitter_px`
    box_jitter_px: float = 10.0
    neighbour_margin_px: int = 6
    click_loss: float = 0.0  # weight of a BCE on the disks around the clicks (what the user pointed at)
    click_radius_px: int = 5
    keep_loss: float = 0.0  # weight of a BCE that keeps the pixels the previous round had right (no harm)
    click_target: str = "disk"  # the click loss's pixels: "disk" around every click, or "error": the error
    # region the round's new click was drawn from (what the evaluation's click asks to fix)
    every_round: bool = False  # a loss on every round of the episode (SAM's iterative training), not the last only
    rule_in_loop: bool = False  # feed back what inference feeds back: the previous mask edited by the click rule
    pair: bool = False  # decodes without clicks as inference runs them: averaged with LiteMedSAM's frozen decoder


def _bbox(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


def _jittered_box(mask: np.ndarray, rng: np.random.Generator, config: TrainConfig) -> np.ndarray:
    box = _bbox(mask)
    w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
    scale = np.array([w, h, w, h], dtype=np.float32) * config.box_jitter
    noise = np.clip(rng.normal(size=4) * scale, -config.box_jitter_px, config.box_jitter_px)
    box = np.clip(box + noise, 0, mask.shape[0] - 1)
    return np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])], np.float32)


def _neighbour_box(mask: np.ndarray, rng: np.random.Generator, config: TrainConfig) -> np.ndarray:
    margin = rng.integers(0, config.neighbour_margin_px + 1, size=4) * np.array([-1, -1, 1, 1])
    return np.clip(_bbox(mask) + margin, 0, mask.shape[0] - 1).astype(np.float32)


class Sampler:
    """Objects of the cached records, drawn with a fixed-seed generator."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = list(records)
        self.objects = [(r, i) for r, rec in enumerate(self.records) for i in range(len(rec.masks))]
        self.with_neighbours = [(r, i) for r, i in self.objects if bool(self.records[r].has_neighbours[i].any())]

    def draw(self, count: int, rng: np.random.Generator, neighbours: bool) -> List[Tuple[int, int]]:
        pool = self.with_neighbours if neighbours and self.with_neighbours else self.objects
        return [pool[int(j)] for j in rng.integers(len(pool), size=count)]


def _points_tensor(clicks: List[List[Tuple[float, float, int]]]) -> Tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(c) for c in clicks))
    coords = torch.zeros((len(clicks), width, 2))
    labels = torch.full((len(clicks), width), float(PAD))
    for b, sample in enumerate(clicks):
        for n, (x, y, label) in enumerate(sample):
            coords[b, n, 0], coords[b, n, 1], labels[b, n] = x, y, label
    return coords, labels


def _losses(logits: torch.Tensor, iou_pred: torch.Tensor, truth: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
    logits, iou_pred = logits.float(), iou_pred.float()
    prob = torch.sigmoid(logits[:, 0])
    target = truth.float()
    inter = (prob * target).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (prob.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none").flatten(1).mean(1)
    with torch.no_grad():
        hard = logits[:, 0] > 0
        actual = (hard & truth).flatten(1).sum(1).float() / (hard | truth).flatten(1).sum(1).clamp(min=1).float()
    mse = (iou_pred[:, 0] - actual) ** 2
    loss = (dice + bce + mse).mean()
    return loss, {"dice_loss": float(dice.mean().detach()), "bce": float(bce.mean().detach()), "iou_mse": float(mse.mean().detach()),
                  "iou": float(actual.mean())}


def _click_disks(clicks: List[List[Tuple[float, float, int]]], size: int, radius: int) -> torch.Tensor:
    """(B, size, size) float: 1 within `radius` pixels of any click of the sample."""
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((len(clicks), size, size), dtype=np.float32)
    for b, sample in enumerate(clicks):
        for x, y, _ in sample:
            out[b][(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = 1.0
    return torch.from_numpy(out)


def _pointed_errors(predicted: np.ndarray, truth: np.ndarray, clicks: List[Tuple[int, int, int]]) -> torch.Tensor:
    """(B, S, S) float: per sample, the connected error region (8-connected, predicted != truth) that holds the
    sample's newest click, i.e. what that click asks the decoder to fix; zeros for samples without a new click."""
    out = np.zeros(predicted.shape, dtype=np.float32)
    for b, click in enumerate(clicks):
        if click is None:
            continue
        x, y = click[0], click[1]
        pieces, _ = ndimage.label(predicted[b] != truth[b], structure=np.ones((3, 3), dtype=bool))
        out[b] = pieces == pieces[y, x]
    return torch.from_numpy(out)


def _masked_bce(logits: torch.Tensor, truth: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits[:, 0].float(), truth.float(), reduction="none")
    return (bce * where).sum() / where.sum().clamp(min=1.0)


def _round_loss(logits, iou_pred, truth, truth_np, clicks, predicted, pointed, config: TrainConfig):
    """The loss of one decoded round: the whole-mask terms, plus the click and keep terms that are switched on.
    `predicted` is the mask this round refines (None on the first prompt), `pointed` the error its newest clicks
    point at (`_pointed_errors`, None when the round added no click)."""
    loss, parts = _losses(logits, iou_pred, truth)
    if config.click_loss and any(clicks):
        if config.click_target == "error":
            if pointed is not None:
                loss = loss + config.click_loss * _masked_bce(logits, truth, pointed)
        else:
            loss = loss + config.click_loss * _masked_bce(logits, truth, _click_disks(clicks, truth.shape[-1], config.click_radius_px))
    if config.keep_loss and predicted is not None:
        # where the previous round was right, the refined mask must stay right: a click fixes its error and
        # leaves the rest alone (the evaluation's harm rate); the error itself is the main loss's business
        loss = loss + config.keep_loss * _masked_bce(logits, truth, torch.from_numpy(predicted == truth_np).float())
    return loss, parts


def _episode(prompt_encoder, mask_decoder, records, chosen, mode: str, rng: np.random.Generator, config: TrainConfig,
             base: Optional[Tuple[Any, Any]] = None):
    """One simulated interaction for the `chosen` objects; `base`: LiteMedSAM's (prompt encoder, mask decoder),
    frozen, whose box logits a decode without clicks is averaged with (`config.pair`, as `engine` decodes)."""
    embeddings = torch.stack([records[r].embedding.float() for r, _ in chosen])
    truth = torch.stack([records[r].masks[i] for r, i in chosen])
    truth_np = truth.numpy()
    boxes: Optional[torch.Tensor] = None
    dense: Optional[torch.Tensor] = None
    clicks: List[List[Tuple[float, float, int]]] = [[] for _ in chosen]
    predicted: Optional[np.ndarray] = None  # the previous round's mask, what the current round refines
    pointed: Optional[torch.Tensor] = None  # the error regions the current round's new clicks point at
    if mode == "box":
        boxes = torch.from_numpy(np.stack([_jittered_box(t, rng, config) for t in truth_np]))
    elif mode == "point":
        for b, t in enumerate(truth_np):
            (y, x), _ = first_click(t, rng)
            clicks[b].append((float(x), float(y), 1))
    else:
        previous = []
        for r, i in chosen:
            has = records[r].has_neighbours[i].numpy()
            side = int(rng.choice(np.nonzero(has)[0])) if has.any() else 0
            previous.append(records[r].neighbours[i, side] if has.any() else records[r].masks[i])
        previous_t = torch.stack(previous)
        boxes = torch.from_numpy(np.stack([_neighbour_box(p.numpy(), rng, config) for p in previous_t]))
        dense = mask_prompt(previous_t)
    rounds = 0 if rng.random() < config.p_first_only else int(rng.integers(1, config.max_rounds + 1))
    total: torch.Tensor = torch.zeros(())
    terms = 0
    for r in range(rounds + 1):
        with torch.set_grad_enabled(config.every_round or r == rounds):  # else only the last round is trained
            logits, iou_pred = run_decoder(prompt_encoder, mask_decoder, embeddings, boxes,
                                           _points_tensor(clicks) if any(clicks) else None, dense)
            if base is not None and boxes is not None and not any(clicks):
                with torch.no_grad():
                    box_only, _ = run_decoder(*base, embeddings, boxes)
                logits = (1.0 - BOX_DECODER_SHARE) * logits + BOX_DECODER_SHARE * box_only
            if torch.is_grad_enabled():
                loss, parts = _round_loss(logits, iou_pred, truth, truth_np, clicks, predicted, pointed, config)
                total, terms = total + loss, terms + 1
        if r == rounds:
            break
        raw = (logits[:, 0] > 0).detach().numpy()
        if config.rule_in_loop and predicted is not None and any(clicks):
            # at inference a click round's answer is the previous mask with the click rule's edit, not the decoder's
            # whole new mask, and that is what the next round is given
            raw = np.stack([local_edit(p, m, [Point(x, y, positive=bool(label)) for x, y, label in c], RULE_2D)
                            if c else m for p, m, c in zip(predicted, raw, clicks)])
        predicted = raw
        dense = mask_prompt(torch.from_numpy(predicted))
        pointed = None
        if rng.random() < config.p_mask_only:
            continue
        new: List[Optional[Tuple[int, int, int]]] = [None] * len(clicks)
        for b, (p, t) in enumerate(zip(predicted, truth_np)):
            click = deepest_error_click(p, t) if rng.random() < 0.5 else random_error_click(p, t, rng)
            if click is not None:
                (y, x), positive = click
                clicks[b].append((float(x), float(y), int(positive)))
                new[b] = (int(x), int(y), int(positive))
        if config.click_target == "error":
            pointed = _pointed_errors(predicted, truth_np, new)
    parts.update({"mode": mode, "rounds": rounds})
    return total / terms, parts


def train(net: Any, records: Sequence[Record], config: TrainConfig, progress: bool = True, log=print,
          base_net: Any = None) -> Dict[str, Any]:
    """Fine-tune `net.prompt_encoder` and `net.mask_decoder` in place; returns the training report. `base_net`:
    LiteMedSAM, whose frozen prompt encoder + decoder `config.pair` needs."""
    if config.pair and base_net is None:
        raise ValueError("pair training needs LiteMedSAM's own decoder: pass base_net")
    base = None
    if config.pair:
        base = (base_net.prompt_encoder.eval(), base_net.mask_decoder.eval())
        for p in (q for m in base for q in m.parameters()):
            p.requires_grad_(False)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    sampler = Sampler(records)
    net.prompt_encoder.train()
    net.mask_decoder.train()
    params = [p for m in (net.prompt_encoder, net.mask_decoder) for p in m.parameters()]
    for p in net.image_encoder.parameters():
        p.requires_grad_(False)
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps, eta_min=config.lr * 0.1)
    # bfloat16 autocast is about 2x faster where the CPU has bf16 instructions; emulated elsewhere, it crawls
    autocast = native_bf16(torch.device("cpu"))
    started = time.perf_counter()
    history: List[Dict[str, float]] = []
    window: List[Dict[str, Any]] = []
    for step in range(config.steps):
        mode = str(rng.choice(MODES, p=[config.p_box, config.p_point, 1 - config.p_box - config.p_point]))
        chosen = sampler.draw(config.batch, rng, mode == "neighbour")
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, parts = _episode(net.prompt_encoder, net.mask_decoder, sampler.records, chosen, mode, rng, config, base)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        window.append({"loss": float(loss.detach()), **parts})
        if (step + 1) % 20 == 0 or step + 1 == config.steps:
            mean = {k: float(np.mean([w[k] for w in window])) for k in ("loss", "dice_loss", "iou")}
            history.append({"step": step + 1, "seconds": round(time.perf_counter() - started, 1), **mean})
            if progress:
                log(f"step {step + 1}/{config.steps} loss {mean['loss']:.4f} iou {mean['iou']:.3f} "
                    f"{time.perf_counter() - started:.0f} s")
            window = []
    net.prompt_encoder.eval()
    net.mask_decoder.eval()
    return {"config": asdict(config), "seconds": round(time.perf_counter() - started, 1), "history": history,
            "precision": "bfloat16 autocast" if autocast else "float32",
            "objects": len(sampler.objects), "objects_with_neighbours": len(sampler.with_neighbours),
            "slices": len(sampler.records), "sources": [r.source for r in sampler.records]}
