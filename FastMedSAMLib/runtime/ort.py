"""An ONNX Runtime session standing in for a torch image encoder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class OrtEncoder:
    """(B, 3, S, S) float32 tensor -> embedding tensor on the session's device, one image per ORT call."""

    def __init__(self, path: Path, device: torch.device) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.device = device
        self.path = path

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        outputs = [self.session.run(None, {self.input: np.ascontiguousarray(one.detach().cpu().numpy())})[0]
                   for one in image.split(1)]
        return torch.from_numpy(np.concatenate(outputs)).to(self.device)
