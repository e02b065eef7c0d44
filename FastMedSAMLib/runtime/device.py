"""Which torch device a Session runs on, and how it computes there."""
from __future__ import annotations

from typing import Union

import torch

from ..errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")
GPU_ENCODE_BATCH = 8  # slices per encoder call when propagating on a GPU (a 256² TinyViT is launch-bound alone)


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


def configure_precision(device: torch.device) -> None:
    """fp32 means IEEE fp32 on a GPU too (process-wide). torch lets cuDNN convolutions run in TF32, whose 10-bit
    mantissa moves logits past the parity limits and flips the pause decisions calibrated on the CPU; half
    precision is asked for explicitly instead (the `torch-fp16` runtime)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a clock read after it times that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` does bfloat16 matrix products in hardware: a CUDA GPU that supports bf16, or a CPU with
    AVX512-BF16 or AMX. Elsewhere oneDNN emulates bf16 and it runs no faster than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(bool(getattr(cpu, probe, lambda: False)()) for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
