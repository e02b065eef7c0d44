"""The fine-tuned part of `litemedsam-refine` on disk: the prompt encoder and mask decoder of a LiteMedSAM, float16,
as a plain state_dict with LiteMedSAM's key names (the image encoder comes from `lite_medsam.pth`, unchanged)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict

import torch

PARTS = ("prompt_encoder.", "mask_decoder.")


def fine_tuned_state(net: Any) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float16).clone() for k, v in net.state_dict().items() if k.startswith(PARTS)}


def save(net: Any, path: Path) -> str:
    """Write the float16 prompt encoder + mask decoder; returns the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fine_tuned_state(net), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()
