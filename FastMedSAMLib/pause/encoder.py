"""The token-paused image encoder the Session runs: pause heads + knob -> `PausedEncoder(image) -> embedding`."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..models.tinyvit import TinyViT
from .heads import PauseHeads
from .knob import validate_pause
from .tinyvit_paused import PausedTinyViT, PauseStats


class PausedEncoder(nn.Module):
    """LiteMedSAM's TinyViT with token pausing at knob `pause` in (0, 1].

    A token pauses at the first head depth where its head predicts a log10 relative error below
    `heads.threshold(pause)`. `last_stats` holds what the last image computed (tokens per block, pause depths)."""

    def __init__(self, encoder: TinyViT, heads: PauseHeads, pause: float) -> None:
        super().__init__()
        self.heads = heads
        self.set_pause(pause)
        self.runner = PausedTinyViT(encoder, heads.catchup, adapters=heads.adapters).eval()
        self.to(next(encoder.parameters()).device)
        self.last_stats: Optional[PauseStats] = None

    def set_pause(self, pause: float) -> None:
        """Move the knob (only the threshold changes: the folded encoder and the heads stay as they are)."""
        pause = validate_pause(pause)
        if pause == 0.0:
            raise ValueError("pause=0 is the plain encoder: call it directly (the paused path must not run)")
        self.pause = pause
        self.threshold = self.heads.threshold(pause)

    def _decide(self, depth: int, features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        head = self.heads.head_at(depth)
        if head is None:
            return torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
        return head(features) < self.threshold

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) -> (B, 256, 64, 64); images run one at a time (each has its own paused set)."""
        outputs = []
        for one in image.split(1):
            embedding, self.last_stats = self.runner(one, decide=self._decide)
            outputs.append(embedding)
        return torch.cat(outputs)

    def paused_fraction(self) -> Optional[float]:
        """Paused fraction of the last image's tokens, averaged over the ViT blocks (0 = none, 1 = all)."""
        if self.last_stats is None:
            return None
        fractions = self.last_stats.paused_fraction()
        return sum(fractions) / len(fractions)
