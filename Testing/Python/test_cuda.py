"""The GPU path, on a CUDA GPU (skipped where torch sees none: CI has none; run on a lent GPU machine): masks of every
runtime agree with the CPU reference on real CT, fp32 stays IEEE fp32 (no TF32), propagation that encodes 8 slices
per call gives the CPU's volume, stage timings are synchronised, token pausing runs, and a 3D point model computes
the CPU's logits."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pytest
import torch

from FastMedSAMLib import Box, Box3D, Session
from FastMedSAMLib.evaluation.metrics import dice
from FastMedSAMLib.io.images import read_image, read_label

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CT = "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115.npz"


@pytest.fixture(scope="module")
def lesion(data_dir, litemedsam_checkpoint) -> Tuple[object, np.ndarray, List[Box], Box3D]:
    """A DeepLesion CT, its lesion mask, the lesion's box on three slices, and its 3D box."""
    ct, gt = read_image(data_dir / CT), read_label(f"{data_dir / CT}::gts").array > 0
    zs = [z for z in range(gt.shape[0]) if gt[z].any()]
    boxes = []
    for z in (zs[0], zs[len(zs) // 2], zs[-1]):
        ys, xs = np.nonzero(gt[z])
        boxes.append(Box(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()), z=z))
    zz, ys, xs = np.nonzero(gt)
    return ct, gt, boxes, Box3D(int(xs.min()), int(ys.min()), int(zz.min()), int(xs.max()), int(ys.max()), int(zz.max()))


@pytest.fixture(scope="module")
def cpu_masks(lesion) -> List[np.ndarray]:
    ct, _, boxes, _ = lesion
    session = Session("litemedsam", "cpu", runtime="torch-exact")
    session.set_image(ct)
    return [session.predict(box=b).mask for b in boxes]


@pytest.mark.parametrize("runtime", ["torch-exact", "torch", "torch-bf16", "torch-fp16"])
def test_gpu_masks_agree_with_the_cpu(lesion, cpu_masks, runtime):
    """The runtime rule (mean Dice >= 0.995 with the reference) across the lesion's first, middle and last slice;
    torch-exact (IEEE fp32 on both) closer still."""
    ct, _, boxes, _ = lesion
    session = Session("litemedsam", "cuda", runtime=runtime)
    session.set_image(ct)
    scores = []
    for box, expected in zip(boxes, cpu_masks):
        prediction = session.predict(box=box)
        scores.append(dice(prediction.mask, expected))
        stages = sum(prediction.timings[s] for s in ("preprocess", "encode", "decode", "postprocess"))
        assert stages <= prediction.timings["total"] + 1e-6 and prediction.timings["encode"] > 0
    assert np.mean(scores) >= (0.999 if runtime == "torch-exact" else 0.995), scores


def test_fp32_is_ieee_on_the_gpu(lesion):
    """No TF32: the GPU's float32 embedding is the CPU's up to float rounding."""
    ct, _, boxes, _ = lesion
    gpu = Session("litemedsam", "cuda", runtime="torch-exact")
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    cpu = Session("litemedsam", "cpu", runtime="torch-exact")
    for session in (gpu, cpu):
        session.set_image(ct)
        session.predict(box=boxes[1])
    key = (None, (cpu._image_key, boxes[1].z))
    a, b = gpu.cache.get(key)[0].cpu(), cpu.cache.get(key)[0]
    assert float((a - b).abs().max() / b.abs().max()) < 1e-4


def test_batched_propagation_gives_the_cpu_volume(lesion):
    ct, gt, _, box3d = lesion
    cpu = Session("litemedsam", "cpu", runtime="torch-exact")
    gpu = Session("litemedsam", "cuda", runtime="torch-exact")
    assert gpu._engine.encode_batch == 8
    results = []
    for session in (cpu, gpu):
        session.set_image(ct)
        results.append(session.predict(box=box3d))
    assert results[1].encoder_calls == box3d.z1 - box3d.z0 + 1
    assert dice(results[1].mask, results[0].mask) >= 0.995
    assert dice(results[1].mask, gt) >= dice(results[0].mask, gt) - 0.005


def test_token_pausing_runs_on_the_gpu(lesion):
    """The paused encoder on the GPU pauses like on the CPU and gives its mask."""
    ct, _, boxes, _ = lesion
    results = []
    for device in ("cpu", "cuda"):
        session = Session("litemedsam", device, pause=0.5)
        session.set_image(ct)
        results.append(session.predict(box=boxes[1]))
    assert results[1].paused_fraction > 0.2
    assert abs(results[1].paused_fraction - results[0].paused_fraction) < 0.02
    assert dice(results[1].mask, results[0].mask) >= 0.98, dice(results[1].mask, results[0].mask)


@pytest.mark.parametrize("model", ["fastsam3d", "sam-med3d-turbo"])
def test_3d_point_model_computes_the_cpu_logits(parity_dir, model):
    from FastMedSAMLib.models.recipe import recipe_model

    net = recipe_model(model, parity_dir, gain=True)
    image = torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(0))
    points = (torch.tensor([[[64.0, 60.0, 70.0]]]), torch.ones(1, 1, dtype=torch.int64))
    expected = net.decode(net.encode(image), points=points)[0]
    net.cuda()
    got = net.decode(net.encode(image.cuda()), points=tuple(p.cuda() for p in points))[0].cpu()
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-3
    assert float(((got > 0) == (expected > 0)).float().mean()) > 0.999
