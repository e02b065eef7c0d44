"""ONNX exports of a model's image encoder, kept in the user cache and never trusted blindly.

Folder: `<cache>/onnx/<model>-<weights sha256[:16]>-torch<v>-onnx<v>-ort<v>-opset<N>/` holding `encoder.onnx`
(float32), on demand `encoder.int8.onnx` (dynamic int8 quantisation of the MatMul/Gemm weights), and
`decoder.onnx` (the prepared decoder's single-mask core, float32, any number of prompt tokens). A new
weights file or tool version gets a new folder (a stale export is never found). Each file has a `.sha256`
sidecar written after the file is complete; a file whose sidecar is missing or whose content does not hash to it
(tampered, truncated by a crash) is rebuilt, never loaded.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import RuntimeChoiceError
from ..weights.store import sha256_file

OPSET = 17

def _tools() -> str:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise RuntimeChoiceError(
            f"the ONNX runtimes need the packages onnx and onnxruntime ({exc.name} is missing): "
            "pip install 'fastmedsam[onnx]', or use runtime='torch'"
        ) from None
    return f"torch{torch.__version__.split('+')[0]}-onnx{onnx.__version__}-ort{onnxruntime.__version__}-opset{OPSET}"


def export_dir(model: str, weights_sha256: str) -> Path:
    from ..weights.store import cache_dir

    return cache_dir() / "onnx" / f"{model}-{weights_sha256[:16]}-{_tools()}"


def is_valid(path: Path) -> bool:
    """The file exists, has a sidecar, and hashes to it."""
    sidecar = path.with_name(path.name + ".sha256")
    if not path.is_file() or not sidecar.is_file():
        return False
    return sidecar.read_text(encoding="utf-8").strip() == sha256_file(path)


def _build(path: Path, write: Callable[[Path], None]) -> Path:
    """Write `path` through a temporary file in the same folder, then its sidecar (a crash leaves no valid pair)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.part")
    os.close(handle)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    path.with_name(path.name + ".sha256").write_text(sha256_file(path) + "\n", encoding="utf-8")
    return path


def export_encoder(encoder: torch.nn.Module, size: int, out: Path) -> None:
    """TorchScript-based ONNX export of `encoder` for a (1, 3, size, size) float32 input."""
    cpu = encoder.to("cpu").eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches (fixed input size)
        torch.onnx.export(cpu, (torch.zeros(1, 3, size, size),), str(out), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["embedding"])


def quantize_int8(source: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])


def encoder_onnx(encoder: torch.nn.Module, model: str, weights_sha256: str, size: int, int8: bool = False,
                 folder: Optional[Path] = None) -> Path:
    """A verified ONNX file of `encoder` (exported / quantised now if missing, stale or tampered)."""
    folder = folder or export_dir(model, weights_sha256)
    fp32 = folder / "encoder.onnx"
    if not is_valid(fp32):
        device = next(encoder.parameters()).device
        try:
            _build(fp32, lambda tmp: export_encoder(encoder, size, tmp))
        finally:
            encoder.to(device)
    if not int8:
        return fp32
    quantized = folder / "encoder.int8.onnx"
    if not is_valid(quantized):
        _build(quantized, lambda tmp: quantize_int8(fp32, tmp))
    return quantized


def export_decoder(core: torch.nn.Module, out: Path) -> None:
    """TorchScript-based ONNX export of a `DecoderCore` (runtime/decoder.py), single-mask form; the number of sparse
    prompt tokens stays dynamic (a box, clicks, or both)."""
    cpu = core.to("cpu").eval()
    tokens, channels = cpu.key_pe.shape
    keys = torch.zeros(tokens, channels)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(cpu, (keys, keys, torch.zeros(2, channels)), str(out), dynamo=False, opset_version=OPSET,
                          input_names=["keys", "keys_pe", "sparse"], output_names=["masks", "iou"],
                          dynamic_axes={"sparse": {0: "prompt_tokens"}})


def decoder_onnx(core: torch.nn.Module, model: str, weights_sha256: str, folder: Optional[Path] = None) -> Path:
    """A verified ONNX file of the single-mask decoder core (exported now if missing, stale or tampered)."""
    path = (folder or export_dir(model, weights_sha256)) / "decoder.onnx"
    if not is_valid(path):
        device = core.key_pe.device
        try:
            _build(path, lambda tmp: export_decoder(core, tmp))
        finally:
            core.to(device)
    return path
