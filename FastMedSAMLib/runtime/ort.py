"""ONNX Runtime sessions standing in for a torch image encoder and for the prepared decoder's core."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import torch


def _session(path: Path, device: torch.device):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)


class OrtEncoder:
    """(B, 3, S, S) float32 tensor -> embedding tensor on the session's device, one image per ORT call."""

    def __init__(self, path: Path, device: torch.device) -> None:
        self.session = _session(path, device)
        self.input = self.session.get_inputs()[0].name
        self.device = device
        self.path = path

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        outputs = [self.session.run(None, {self.input: np.ascontiguousarray(one.detach().cpu().numpy())})[0]
                   for one in image.split(1)]
        return torch.from_numpy(np.concatenate(outputs)).to(self.device)


class OrtDecoderCore:
    """The single-mask `DecoderCore` (runtime/decoder.py) run by ONNX Runtime: (keys, keys_pe, sparse) tensors ->
    (mask logits (1, 4h, 4w), IoU (1,)) tensors on the session's device."""

    def __init__(self, path: Path, device: torch.device) -> None:
        self.session = _session(path, device)
        self.device = device
        self.path = path

    def __call__(self, keys: torch.Tensor, keys_pe: torch.Tensor, sparse: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy())
                for name, t in (("keys", keys), ("keys_pe", keys_pe), ("sparse", sparse))}
        masks, iou = self.session.run(None, feed)
        return torch.from_numpy(masks).to(self.device), torch.from_numpy(iou).to(self.device)
