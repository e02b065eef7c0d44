"""Which torch device a Session runs on."""
from __future__ import annotations

from typing import Union

import torch

from ..errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """'auto' -> the first CUDA GPU if torch sees one, else the CPU; 'cuda' without a GPU raises DeviceError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"unknown device {device!r}; use one of {', '.join(DEVICES)} (or 'cuda:N')") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} was asked for but torch sees no CUDA GPU here; use 'cpu' or 'auto'")
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {device!r} is not supported; use one of {', '.join(DEVICES)} (or 'cuda:N')")
    return resolved
