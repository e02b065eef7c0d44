"""Label-free training of the pause heads from the frozen LiteMedSAM encoder (no labels, no prompts).

1. Catch-ups: on the first `catchup_slices` slices the encoder runs in full and records, for every block, each
   token's input to the attention and MLP branches and the residual update they add. A ridge regression per
   block and branch fits a linear stand-in update (sufficient statistics over every token: exact and cheap).
   Paused tokens receive these updates instead of the real ones, so they stay in the distribution the later
   blocks, the neck and the decoder expect (frozen tokens do not: the last block alone moves a token's features
   by ~2x their spatial variance, and freezing tokens cost >10 DSC points in our measurements).
2. Targets: on every slice, for each head depth k, `paused_tokens` gives the final tokens when every token pauses
   at k; target_k(token) = log10(mean squared error against the full forward's final tokens at the token's
   final-grid location / the mean per-channel variance of the final tokens). Label-free: the frozen model
   teaches itself how wrong a token would end up if it paused at k.
3. Heads: each regresses its target from the token's features entering block k (sampled tokens, Adam, MSE).
4. Knob: `knob_table[i]` is the lowest threshold at which the heads skip a fraction i/100 of the training
   tokens' block computations, so pause = p skips about a fraction p of the ViT token work on images like the
   training slices (images with more background skip more, busier ones less).
All draws come from one seed; the encoder runs on one image at a time, so the run is deterministic on one machine.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..models.litemedsam import LiteMedSAMAdapter
from ..models.tinyvit import TinyViT
from .data import TrainingSlice, summary
from .heads import PauseHeads
from .tinyvit_paused import PausedTinyViT

RIDGE = 1e-2  # relative to the mean diagonal of X^T X
EPS = 1e-6


@dataclass
class TrainConfig:
    seed: int = 0
    slices: int = 200
    catchup_slices: int = 60
    samples_per_slice: int = 256
    depths: Tuple[int, ...] = (0, 2, 4, 6, 8, 9)
    hidden: int = 32
    epochs: int = 40
    batch: int = 1024
    lr: float = 3e-3


@dataclass
class Samples:
    """Sampled tokens per head depth: their features entering the block and their target."""

    features: Dict[int, List[torch.Tensor]] = field(default_factory=dict)
    targets: Dict[int, List[torch.Tensor]] = field(default_factory=dict)


def _tensor(item: TrainingSlice) -> torch.Tensor:
    return LiteMedSAMAdapter().preprocess(item.rgb)[0]


@torch.inference_mode()
def fit_catchups(runner: PausedTinyViT, heads: PauseHeads, slices: Sequence[TrainingSlice], progress: bool) -> float:
    """Fit `heads.catchup` by ridge regression; returns the mean per-channel variance of the final tokens."""
    from tqdm import tqdm

    stats: Dict[Tuple[int, str], List[torch.Tensor]] = {}

    def record(depth: int, branch: str, x: torch.Tensor, update: torch.Tensor) -> None:
        x1 = torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
        if (depth, branch) not in stats:
            stats[(depth, branch)] = [x1.T @ x1, x1.T @ update.double()]
        else:
            stats[(depth, branch)][0] += x1.T @ x1
            stats[(depth, branch)][1] += x1.T @ update.double()

    variances = []
    for item in tqdm(slices, desc="pause: catch-up statistics", unit="slice", disable=not progress):
        features: Dict[int, torch.Tensor] = {}
        runner(_tensor(item), features=features, record=record)
        variances.append(float(features[len(runner.blocks)].var(0).mean()))
    for (depth, branch), (xtx, xty) in stats.items():
        penalty = torch.eye(xtx.shape[0], dtype=torch.float64) * RIDGE * float(torch.diagonal(xtx).mean())
        penalty[-1, -1] = 0.0  # the bias is not shrunk
        solution = torch.linalg.solve(xtx + penalty, xty).float()
        linear = heads.catchup[depth][branch]
        linear.weight.copy_(solution[:-1].T)
        linear.bias.copy_(solution[-1])
    return float(np.mean(variances))


def _child_tokens(runner: PausedTinyViT, depth: int, final_index: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """For final-grid locations, one token of block `depth`'s grid that merges into each (a random child)."""
    fh, fw = runner.blocks[-1].hw
    h, w = runner.blocks[depth].hw
    sy, sx = h // fh, w // fw
    row, col = final_index // fw, final_index % fw
    dy = torch.from_numpy(rng.integers(0, sy, size=len(final_index)))
    dx = torch.from_numpy(rng.integers(0, sx, size=len(final_index)))
    return (row * sy + dy) * w + col * sx + dx


@torch.inference_mode()
def collect_targets(runner: PausedTinyViT, depths: Sequence[int], slices: Sequence[TrainingSlice], variance: float,
                    samples: int, rng: np.random.Generator, progress: bool) -> Samples:
    from tqdm import tqdm

    out = Samples()
    fh, fw = runner.blocks[-1].hw
    for item in tqdm(slices, desc="pause: targets", unit="slice", disable=not progress):
        features: Dict[int, torch.Tensor] = {}
        runner(_tensor(item), features=features)
        final = features[len(runner.blocks)]
        where = torch.from_numpy(rng.choice(fh * fw, size=samples, replace=False))
        for k in depths:
            paused = runner.paused_tokens(features[k], k)
            error = ((paused[where] - final[where]) ** 2).mean(1) / variance
            out.targets.setdefault(k, []).append(torch.log10(error + EPS))
            out.features.setdefault(k, []).append(features[k][_child_tokens(runner, k, where, rng)].clone())
    return out


def train_heads(heads: PauseHeads, data: Samples, config: TrainConfig, progress: bool) -> Dict[int, Dict[str, float]]:
    """Fit every head by MSE on its sampled tokens (90/10 split); returns per-depth train/validation RMSE."""
    generator = torch.Generator().manual_seed(config.seed)
    report = {}
    for depth, head in zip(heads.depths, heads.heads):
        x = torch.cat(data.features[depth])
        y = torch.cat(data.targets[depth])
        order = torch.randperm(len(y), generator=generator)
        cut = len(y) * 9 // 10
        train, valid = order[:cut], order[cut:]
        optimiser = torch.optim.Adam(head.parameters(), lr=config.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, config.epochs)
        head.train()
        for _ in range(config.epochs):
            for batch in train[torch.randperm(len(train), generator=generator)].split(config.batch):
                loss = F.mse_loss(head(x[batch]), y[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            schedule.step()
        head.eval()
        with torch.no_grad():
            report[depth] = {
                "train_rmse": float(F.mse_loss(head(x[train]), y[train]).sqrt()),
                "valid_rmse": float(F.mse_loss(head(x[valid]), y[valid]).sqrt()),
                "target_std": float(y.std()),
                "target_median": float(y.median()),
            }
        if progress:
            print(f"pause: head at block {depth}: " + ", ".join(f"{k} {v:.3f}" for k, v in report[depth].items()))
    return report


@torch.no_grad()
def skipped_work(heads: PauseHeads, data: Samples, thresholds: torch.Tensor, blocks: int) -> torch.Tensor:
    """For each threshold, the fraction of (token, block) computations the heads would skip on the sampled
    training locations: a location pauses at the first head whose prediction is below the threshold."""
    predictions = torch.stack([head(torch.cat(data.features[d])) for d, head in zip(heads.depths, heads.heads)])
    depths = torch.tensor(heads.depths, dtype=torch.float32)[:, None]
    out = []
    for t in thresholds.tolist():
        below = predictions < t
        first = torch.where(below.any(0), depths.expand_as(below).masked_fill(~below, blocks).min(0).values,
                            torch.tensor(float(blocks)))
        out.append(float((blocks - first).mean() / blocks))
    return torch.tensor(out)


@torch.no_grad()
def calibrate_knob(heads: PauseHeads, data: Samples, blocks: int) -> None:
    """knob_table[i]: the lowest threshold that skips at least i/(len-1) of the training tokens' block work."""
    predictions = torch.cat([head(torch.cat(data.features[d])) for d, head in zip(heads.depths, heads.heads)])
    candidates = torch.quantile(predictions, torch.linspace(0.0, 1.0, 2001)).unique()
    candidates = torch.cat([candidates, candidates[-1:] + 1e-3])
    skipped = skipped_work(heads, data, candidates, blocks)
    levels = torch.linspace(0.0, 1.0, len(heads.knob_table))
    index = torch.searchsorted(skipped, levels).clamp(max=len(candidates) - 1)
    heads.knob_table.copy_(candidates[index])


@torch.no_grad()
def to_storage_precision(module: torch.nn.Module) -> None:
    """Round `module`'s parameters to float16, the precision the heads file stores them in (it halves the file;
    computation stays float32)."""
    for parameter in module.parameters():
        parameter.copy_(parameter.half().float())


def train(encoder: TinyViT, slices: Sequence[TrainingSlice], config: TrainConfig, progress: bool = True) -> Tuple[PauseHeads, Dict]:
    """Train pause heads for a LiteMedSAM TinyViT encoder on unlabelled `slices`; returns them and a report."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    runner = PausedTinyViT(encoder).eval()
    heads = PauseHeads("litemedsam", config.depths, runner.dims, config.hidden)
    variance = fit_catchups(runner, heads, slices[: config.catchup_slices], progress)
    to_storage_precision(heads.catchup)  # targets and heads then see exactly the weights the file will hold
    runner.catchup = heads.catchup
    data = collect_targets(runner, config.depths, slices, variance, config.samples_per_slice, rng, progress)
    fit = train_heads(heads, data, config, progress)
    to_storage_precision(heads.heads)  # the knob is calibrated on the stored heads
    calibrate_knob(heads, data, len(runner.blocks))
    report = {
        "config": asdict(config),
        "final_token_variance": variance,
        "heads": {str(k): v for k, v in fit.items()},
        "knob_quartiles": [float(heads.threshold(p)) for p in (0.25, 0.5, 0.75)],
        "data": summary(slices),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return heads.eval(), report


