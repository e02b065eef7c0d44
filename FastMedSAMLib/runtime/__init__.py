"""Runtimes: how a Session computes the same model. `Session(..., runtime=NAME)`:

* "torch-exact": the eager modules, bit-exact to the reference code (parity tests and reference comparisons).
* "torch": the folded/fused encoder (LiteMedSAM's TinyViT; other families keep their eager encoder) and the
  prepared decoder (image-side work once per embedding, only the mask that is used).
* "torch-bf16": the same encoder, the prepared decoder with its image side in bfloat16 (only where the device has
  bf16 matrix instructions: AVX512-BF16 or AMX CPUs, bf16 GPUs; `device.native_bf16`).
* "onnxruntime": the image encoder and the prepared decoder's single-mask core exported to ONNX (`fastmedsam
  export-onnx MODEL`, cached and sha256-checked, see `onnx_cache`), run by ONNX Runtime with every graph
  optimisation (the prompt encoder and multimask requests stay in torch).
* "onnxruntime-int8": the same, the encoder's export with dynamic int8 quantisation of the matrix products.
* "torch-fp16": the eager encoder under float16 autocast, float32 decoder (GPU only: see `half`).

The defaults were chosen by measurement (README, *Runtimes*), per device: the fastest runtime whose masks agree
with torch-exact (mean Dice >= 0.995 on real slices) and whose development eval stays within 0.2 points.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Optional

from ..errors import RuntimeChoiceError

RUNTIMES = ("torch-exact", "torch", "torch-bf16", "onnxruntime", "onnxruntime-int8", "torch-fp16")
DEFAULT_RUNTIME = "torch-bf16"  # on a CPU with bf16 instructions
CPU_FALLBACK_RUNTIME = "torch"  # on other CPUs
GPU_DEFAULT_RUNTIME = "torch"  # on a CUDA GPU
GPU_ONLY = ("torch-fp16",)
NATIVE_BF16 = ("torch-bf16",)  # refused where bf16 would be emulated


def validate_runtime(name: str, device: Any = None) -> str:
    """`name` if it is a runtime (that runs on `device`, a torch.device, when given); else RuntimeChoiceError."""
    if name not in RUNTIMES:
        raise RuntimeChoiceError(f"unknown runtime {name!r}; use one of {', '.join(RUNTIMES)}")
    if device is not None and name in GPU_ONLY and device.type != "cuda":
        raise RuntimeChoiceError(f"runtime {name!r} is for CUDA GPUs (half-precision matrix units); on {device.type} "
                                 "use 'torch' or 'onnxruntime'")
    if device is not None and name in NATIVE_BF16 and not _native_bf16(device):
        raise RuntimeChoiceError(f"runtime {name!r} needs bfloat16 matrix instructions (AVX512-BF16 or AMX on a CPU), "
                                 f"which this {device.type} lacks (emulated bf16 is no faster); use 'torch'")
    return name


def _native_bf16(device: Any) -> bool:
    from .device import native_bf16  # torch: imported only once a device is at hand

    return native_bf16(device)


def default_runtime(device: Any) -> str:
    """The measured default for `device` (a torch.device)."""
    if device.type == "cuda":
        return GPU_DEFAULT_RUNTIME
    return DEFAULT_RUNTIME if _native_bf16(device) else CPU_FALLBACK_RUNTIME


@dataclass
class Runtime:
    """What a SliceEngine runs: `encoder(tensor) -> embedding`, `decoder` called like `SamModel.decode`, and the
    tag that keeps cached embeddings of different encoders apart (None: the eager encoder's embeddings)."""

    name: str
    encoder: Callable[[Any], Any]
    decoder: Callable[..., Any]
    tag: Hashable
    fused: bool = False  # the encoder is the folded/fused one (or an export of the model), not the eager modules
    batch: int = 1  # slices one encoder call may take in propagation (more where it is faster: GPUs)


def weights_sha256(model: str, weights: Optional[Path]) -> str:
    """The sha256 of the weights a Session loaded: the registry's pinned one (the store verified the file against
    it), or that of the file given."""
    from ..weights.registry import get_spec
    from ..weights.store import sha256_file

    return sha256_file(Path(weights)) if weights is not None else get_spec(model).sha256


def build_runtime(name: str, net: Any, model: str, device: Any, *, frame: int, weights: Optional[Path] = None) -> Runtime:
    """The runtime `name` for the loaded 2D model `net` (input frame `frame` px) on `device`."""
    from .device import GPU_ENCODE_BATCH
    from .fused import FusedEncoder, fusable

    validate_runtime(name, device)
    batch = GPU_ENCODE_BATCH if device.type == "cuda" else 1  # the eager encoders take a batch at once
    if name == "torch-exact":
        return Runtime(name, net.encode, net.decode, None, batch=batch)
    if name.startswith("onnxruntime"):
        return _onnx_runtime(name, net, model, device, frame, weights)
    decoder = build_decoder(name, net, model, device, weights=weights)
    if name == "torch-fp16":
        from .half import AutocastEncoder

        return Runtime(name, AutocastEncoder(net.encode, device.type), decoder, ("runtime", name), batch=batch)
    if fusable(net.image_encoder):
        return Runtime(name, FusedEncoder(net.image_encoder), decoder, ("runtime", name), fused=True)
    return Runtime(name, net.encode, decoder, None)


def build_decoder(name: str, net: Any, model: str, device: Any, *, weights: Optional[Path] = None) -> Callable[..., Any]:
    """The decoder runtime `name` runs for the loaded 2D model `net`, called like `SamModel.decode`: the plain one
    (torch-exact), the prepared one (bfloat16 image side for torch-bf16), or that with its core in ONNX."""
    import torch

    from .decoder import PreparedDecoder

    if name == "torch-exact":
        return net.decode
    if name.startswith("onnxruntime"):
        from .onnx_cache import decoder_onnx
        from .ort import OrtDecoderCore

        decoder = PreparedDecoder(net)
        decoder.single = OrtDecoderCore(decoder_onnx(decoder.core, model, weights_sha256(model, weights)), device)
        return decoder
    return PreparedDecoder(net, image_dtype=torch.bfloat16 if name == "torch-bf16" else torch.float32)


def _onnx_runtime(name: str, net: Any, model: str, device: Any, frame: int, weights: Optional[Path]) -> Runtime:
    """ONNX Runtime encoder (float32 or int8) + the prepared decoder with its single-mask core in ONNX (float32)."""
    from .onnx_cache import encoder_onnx
    from .ort import OrtEncoder

    sha = weights_sha256(model, weights)
    encoder = OrtEncoder(encoder_onnx(net.image_encoder, model, sha, frame, int8=name.endswith("int8")), device)
    return Runtime(name, encoder, build_decoder(name, net, model, device, weights=weights), ("runtime", name), fused=True)


__all__ = ["RUNTIMES", "DEFAULT_RUNTIME", "CPU_FALLBACK_RUNTIME", "GPU_DEFAULT_RUNTIME", "default_runtime", "Runtime", "build_decoder", "build_runtime", "validate_runtime", "weights_sha256"]
