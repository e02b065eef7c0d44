"""The models alone: encoder and decoder forward passes on their input size, per arithmetic, side by side.

`fastmedsam bench --forward` answers "how fast is the network itself here" (the GPU goals: FastSAM3D encoder +
decoder per 128³ crop, a LiteMedSAM slice), apart from the Session's pre/post-processing. For each model and each
encoder precision (float32; float16 / bfloat16 autocast, decoder always float32) it times one encode, a batch of
slices per encode (2D), one decode (a box, or a 3D click) and, on a GPU, the 2D decode replayed as a CUDA graph
(launch overhead gone), and says how far the half-precision embedding and mask are from float32's.

Inputs are fixed pseudo-random tensors of the model's input size (the speed does not depend on content); the
weights are the official ones when cached, else the deterministic parity recipe (with its realistic-gain variant,
so activations have a trained network's magnitudes).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..runtime.device import resolve_device, synchronize

PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
BATCH_2D = 8


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmups: int = 3) -> Tuple[float, Any]:
    """Median wall-clock ms of `fn()` over `repeats` calls after `warmups`, synchronised; and its last result."""
    out = None
    for _ in range(warmups):
        out = fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times), out


def _load(model: str, device: torch.device, parity_dir: Optional[Path]) -> Tuple[Any, str]:
    from ..models import load_model
    from ..models.recipe import recipe_model
    from ..weights.store import cache_state

    if cache_state(model) == "verified":
        return load_model(model, device), "official"
    if parity_dir is None:
        raise FileNotFoundError(f"{model}: weights not cached and no parity folder for the recipe weights")
    return recipe_model(model, parity_dir, gain=True).to(device), "recipe (gain)"


def _inputs(model: str, device: torch.device) -> Tuple[torch.Tensor, Dict[str, Any], int]:
    """A seeded input of the model's size, its prompt keyword arguments, and the 2D frame (0 for 3D)."""
    from ..weights.registry import get_spec

    generator = torch.Generator().manual_seed(0)
    if get_spec(model).dimensionality == "3D":
        image = torch.randn(1, 1, 128, 128, 128, generator=generator).to(device)
        coords = torch.tensor([[[64.0, 60.0, 70.0]]], device=device)
        return image, {"points": (coords, torch.ones(1, 1, dtype=torch.int64, device=device))}, 0
    from ..models import slice_adapter

    size = slice_adapter(model).size
    image = torch.rand(1, 3, size, size, generator=generator).to(device)
    box = torch.tensor([[[size * 0.3, size * 0.25, size * 0.7, size * 0.6]]], device=device)
    return image, {"boxes": box}, size


def _encoder(net: Any, dtype: Optional[torch.dtype], device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    if dtype is None:
        return net.encode
    from ..runtime.half import AutocastEncoder

    return AutocastEncoder(net.encode, device.type, dtype)


def _graph_decode(net: Any, embedding: torch.Tensor, prompt: Dict[str, Any]) -> Callable[[], Any]:
    """The decode captured once as a CUDA graph over fixed input tensors; the callable replays it."""
    static = embedding.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # kernels chosen and workspaces allocated before capture
            net.decode(static, **prompt)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        net.decode(static, **prompt)
    return graph.replay


def bench_forward(models: Sequence[str], *, device: str = "auto", precisions: Sequence[str] = tuple(PRECISIONS),
                  repeats: int = 20, warmups: int = 3, batch: int = BATCH_2D,
                  parity_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Encoder / decoder forward timings per model and encoder precision (2D encoders also `batch` slices per
    call); returns the JSON-ready report."""
    from ..runtime.device import configure_precision
    from .box_protocol import environment

    target = resolve_device(device)
    configure_precision(target)
    rows: List[Dict[str, Any]] = []
    for model in models:
        net, weights = _load(model, target, parity_dir)
        image, prompt, frame = _inputs(model, target)
        reference = net.encode(image)
        decode_ms, (reference_logits, _) = _timed(lambda: net.decode(reference, **prompt), target, repeats, warmups)
        graph_ms = None
        if target.type == "cuda" and frame:  # the 3D decoders read values back to the host mid-way: not capturable
            graph_ms = _timed(_graph_decode(net, reference, prompt), target, repeats, warmups)[0]
        for name in precisions:
            encode = _encoder(net, PRECISIONS[name], target)
            row: Dict[str, Any] = {"model": model, "weights": weights, "precision": name, "input": list(image.shape)}
            row["encode_ms"], embedding = _timed(lambda: encode(image), target, repeats, warmups)
            row["decode_ms"] = decode_ms
            if graph_ms is not None:
                row["decode_cuda_graph_ms"] = graph_ms
            row["encode_decode_ms"] = row["encode_ms"] + decode_ms
            if frame:
                slices = image.expand(batch, -1, -1, -1).contiguous()
                per_call, _ = _timed(lambda: encode(slices), target, max(repeats // 4, 1), min(warmups, 1))
                row["encode_ms_per_slice_in_batch"] = per_call / batch
            logits, _ = net.decode(embedding, **prompt)
            row["embedding_rel_error"] = float((embedding - reference).abs().max() / reference.abs().max())
            row["mask_agreement"] = float(((logits > 0) == (reference_logits > 0)).float().mean())
            rows.append(row)
    settings = {"repeats": repeats, "warmups": warmups, "batch": batch, "models": list(models),
                "precisions": list(precisions)}
    return {"environment": environment(target), "settings": settings, "rows": rows}


def markdown(report: Dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"torch {env['torch']}, {env.get('gpu') or env['cpu']} ({env['device']}); medians of "
             f"{report['settings']['repeats']}", "",
             f"| model | weights | encoder precision | encode ms | per slice, batch of {report['settings']['batch']} | "
             "decode ms | decode as CUDA graph "
             "| encode + decode ms | embedding rel. error | mask pixels equal |", "|---" * 10 + "|"]
    for row in report["rows"]:
        batch = row.get("encode_ms_per_slice_in_batch")
        graph = row.get("decode_cuda_graph_ms")
        lines.append(
            f"| {row['model']} | {row['weights']} | {row['precision']} | {row['encode_ms']:.2f} | "
            f"{'–' if batch is None else format(batch, '.2f')} | {row['decode_ms']:.2f} | "
            f"{'–' if graph is None else format(graph, '.2f')} | {row['encode_decode_ms']:.2f} | "
            f"{row['embedding_rel_error']:.1e} | {row['mask_agreement']:.4f} |")
    if "gpu_peak_memory_mb" in env:
        lines.append(f"\npeak GPU memory {env['gpu_peak_memory_mb']:.0f} MiB; fp32 matmul {env['matmul_fp32']}, "
                     f"conv {env['conv_fp32']}")
    return "\n".join(lines)
