"""Pause heads: one tiny regressor per chosen depth, plus the knob -> threshold table; saving and verified loading.

A head at depth d reads a token's features entering ViT block d and predicts log10 of the (relative) error its
final features would have if it paused there (see `train.py`). A token pauses at the first depth
whose prediction is below the threshold of the knob; the threshold never needs retraining: `knob_table[i]` is the
threshold for pause = i / (len - 1), linear in between.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import WeightsError
from ..weights.store import sha256_file
from .knob import validate_pause

FORMAT = "fastmedsam-pause-heads"
VERSION = 1
PathLike = Union[str, Path]


class PauseHead(nn.Module):
    """LayerNorm -> Linear(dim, hidden) -> GELU -> Linear(hidden, 1): predicted log10 error per token."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x)))).squeeze(-1)


class LowRankAdapter(nn.Module):
    """x -> up(down(x)), rank `rank`, `up` zero at first (so a new adapter changes nothing): a residual update
    for the active tokens of a block that runs with paused tokens (see `tinyvit_paused`, `tune.py`)."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class PauseHeads(nn.Module):
    """Everything token pausing learns for one encoder: heads at `depths` (indices of the blocks they gate,
    increasing), one catch-up pair per block (`block_dims`: the block widths), the knob table and, when
    `adapter_rank` > 0, one low-rank adapter per block for the active tokens of blocks that run paused."""

    def __init__(self, model: str, depths: Sequence[int], block_dims: Sequence[int], hidden: int,
                 knob_points: int = 101, adapter_rank: int = 0) -> None:
        super().__init__()
        if not depths or list(depths) != sorted(set(depths)) or not 0 <= depths[0] <= depths[-1] < len(block_dims):
            raise ValueError(f"pause head depths must be distinct, increasing block indices: {depths}")
        self.model = model
        self.depths = tuple(int(d) for d in depths)
        self.block_dims = tuple(int(c) for c in block_dims)
        self.hidden = int(hidden)
        self.heads = nn.ModuleList(PauseHead(self.block_dims[d], hidden) for d in self.depths)
        # per block: linear stand-ins for the attention and MLP residual updates, applied to paused tokens
        self.catchup = nn.ModuleList(
            nn.ModuleDict({"attn": nn.Linear(c, c), "mlp": nn.Linear(c, c)}) for c in self.block_dims
        )
        self.register_buffer("knob_table", torch.linspace(-3.0, 1.0, knob_points))
        self.adapter_rank = 0
        self.adapters: Optional[nn.ModuleList] = None
        self.add_adapters(adapter_rank)

    def add_adapters(self, rank: int) -> None:
        """Give every block a low-rank adapter of `rank` (0: none), initially a no-op."""
        if rank:
            self.adapters = nn.ModuleList(LowRankAdapter(c, rank) for c in self.block_dims)
        self.adapter_rank = int(rank)

    def head_at(self, depth: int) -> Optional[PauseHead]:
        return self.heads[self.depths.index(depth)] if depth in self.depths else None

    def threshold(self, pause: float) -> float:
        """log10 error below which a token pauses, for a knob value in [0, 1] (monotone in the knob)."""
        table = self.knob_table
        position = validate_pause(pause) * (len(table) - 1)
        low = min(int(position), len(table) - 2)
        frac = position - low
        return float(table[low] * (1.0 - frac) + table[low + 1] * frac)

    def save(self, path: PathLike, meta: Dict[str, Any]) -> str:
        """Write the heads (weights, depths, knob table, `meta`) to `path`; returns the file's sha256."""
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "depths": list(self.depths),
            "block_dims": list(self.block_dims),
            "hidden": self.hidden,
            "adapter_rank": self.adapter_rank,
            # float16 storage (weights are trained at that precision, see train.to_storage_precision); the knob
            # table stays float32. Loading casts back to float32.
            "state_dict": {k: (v.half() if v.is_floating_point() and k != "knob_table" else v).detach().clone().contiguous()
                           for k, v in self.state_dict().items()},
            "meta": meta,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, path)
        return sha256_file(Path(path))


def load_heads(path: PathLike, sha256: Optional[str], model: Optional[str] = None) -> PauseHeads:
    """Load a heads file after checking its sha256 (`sha256=None` only for a file you have just trained).

    Raises WeightsError when the file is missing, differs from `sha256`, is not a heads file, or is for another model."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"pause heads file not found: {path}")
    if sha256 is not None:
        actual = sha256_file(Path(path))
        if actual != sha256.lower():
            raise WeightsError(
                f"pause heads at {path} fail verification: expected sha256 {sha256}, found {actual}; "
                "restore the committed file (git checkout models/) or retrain with `fastmedsam train-pause`"
            )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a file that is not a checkpoint
        raise WeightsError(f"{path} is not a readable pause heads file: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise WeightsError(f"{path} is not a FastMedSAM pause heads file (format {FORMAT} v{VERSION})")
    if model is not None and payload["model"] != model:
        raise WeightsError(f"pause heads at {path} are for model {payload['model']!r}, not {model!r}")
    try:
        heads = PauseHeads(payload["model"], payload["depths"], payload["block_dims"], payload["hidden"],
                           len(payload["state_dict"]["knob_table"]), int(payload.get("adapter_rank", 0)))
        heads.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise WeightsError(f"pause heads at {path} do not match their declared layout: {exc}") from None
    heads.meta = payload.get("meta", {})
    return heads.eval()
