"""Runtimes (torch-exact, torch, onnxruntime, onnxruntime-int8; torch-fp16 on GPUs) on real CT and X-ray slices with
the real LiteMedSAM weights: every CPU runtime's masks agree with torch-exact (the GPU's in test_cuda.py); the
prepared decoder is the plain decoder up to float rounding; a tampered, truncated or stale ONNX export is rebuilt,
never used; propagation that encodes several slices per call gives the same volume."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch

from FastMedSAMLib import Box, Box3D, Session
from FastMedSAMLib.errors import RuntimeChoiceError
from FastMedSAMLib.evaluation.metrics import dice
from FastMedSAMLib.io.images import read_image, read_label
from FastMedSAMLib.models.window import OUTSIDE_LOGIT, Window
from FastMedSAMLib.runtime import (
    CPU_FALLBACK_RUNTIME,
    DEFAULT_RUNTIME,
    GPU_ONLY,
    NATIVE_BF16,
    RUNTIMES,
    default_runtime,
    validate_runtime,
)
from FastMedSAMLib.runtime.decoder import DecoderCore, PreparedDecoder, prompt_region
from FastMedSAMLib.runtime.device import native_bf16
from FastMedSAMLib.runtime.half import AutocastEncoder
from FastMedSAMLib.runtime.onnx_cache import decoder_onnx, encoder_onnx, export_dir, is_valid
from FastMedSAMLib.runtime.ort import OrtDecoderCore

# Mean Dice with torch-exact each runtime must reach on the real slices. int8 measured 0.91 here (small lesions lose
# their edges; README, *Runtimes*): opt-in only, never the default; its bound guards against a broken export.
AGREEMENT = {"torch": 0.995, "torch-bf16": 0.995, "onnxruntime": 0.995, "onnxruntime-int8": 0.85}


def _gt_box(gt: np.ndarray, z=None) -> Box:
    ys, xs = np.nonzero(gt)
    return Box(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()), z=z)


@pytest.fixture(scope="module")
def cases(data_dir, litemedsam_checkpoint) -> List[Tuple[object, Box]]:
    """(image, box) pairs: three lesion slices of a DeepLesion CT and the right lung of a chest X-ray."""
    path = data_dir / "ct_deeplesion_medsam2" / "CT_Lesion_000015_01_01_103-115.npz"
    ct, gt = read_image(path), read_label(f"{path}::gts").array > 0
    zs = [z for z in range(gt.shape[0]) if gt[z].any()]
    out = [(ct, _gt_box(gt[z], z)) for z in (zs[0], zs[len(zs) // 2], zs[-1])]
    xray = data_dir / "xray_lung" / "cxr" / "CHNCXR_0001_0.png"
    lungs = read_label(data_dir / "xray_lung" / "masks_bin" / "CHNCXR_0001_0.png").array > 0
    lungs = lungs.reshape(lungs.shape[-2:])
    right = lungs.copy()
    right[:, lungs.shape[1] // 2:] = False
    out.append((read_image(xray), _gt_box(right)))
    return out


def _masks(runtime: str, cases) -> Tuple[List[np.ndarray], List[torch.Tensor]]:
    session = Session("litemedsam", "cpu", runtime=runtime)
    masks, logits = [], []
    for image, box in cases:
        session.set_image(image)
        masks.append(session.predict(box=box).mask)
        embedding = session.cache.get((session._engine.encoder_tag, (session._image_key, box.z or 0)))[0]
        logits.append(embedding)
    return masks, logits


@pytest.fixture(scope="module")
def reference(cases) -> Tuple[List[np.ndarray], List[torch.Tensor]]:
    return _masks("torch-exact", cases)


@pytest.mark.parametrize("runtime", [r for r in RUNTIMES if r != "torch-exact" and r not in GPU_ONLY])
def test_runtime_masks_agree_with_torch_exact(runtime, cases, reference):
    if runtime in NATIVE_BF16 and not native_bf16(torch.device("cpu")):
        with pytest.raises(RuntimeChoiceError, match="AVX512-BF16"):
            Session("litemedsam", "cpu", runtime=runtime)
        return
    masks, embeddings = _masks(runtime, cases)
    scores = [dice(a, b) for a, b in zip(masks, reference[0])]
    assert np.mean(scores) >= AGREEMENT[runtime], scores
    assert all(m.any() for m in masks)
    if runtime in ("torch", "onnxruntime"):  # the same function up to float rounding
        error = max(float((a - b).abs().max()) for a, b in zip(embeddings, reference[1]))
        assert error < 1e-3


@pytest.mark.parametrize("bf16", [True, False])
def test_default_runtime_is_one_that_keeps_the_masks(bf16, monkeypatch):
    """The CPU default is torch-bf16 where the CPU has bf16 instructions and torch elsewhere: both keep the masks."""
    import FastMedSAMLib.runtime.device as device_module

    monkeypatch.setattr(device_module, "native_bf16", lambda device: bf16)
    chosen = default_runtime(torch.device("cpu"))
    assert chosen == (DEFAULT_RUNTIME if bf16 else CPU_FALLBACK_RUNTIME)
    assert chosen in RUNTIMES and AGREEMENT[chosen] >= 0.995
    validate_runtime(chosen, torch.device("cpu"))


PROMPTS = {  # frame coordinates; each case's embedding is decoded with each prompt set
    "box": dict(boxes=[[10.0, 20.0, 120.0, 200.0]]),
    "small box": dict(boxes=[[60.0, 60.0, 90.0, 100.0]]),
    "box + clicks": dict(boxes=[[10.0, 20.0, 120.0, 200.0]], points=([[70.0, 80.0], [100.0, 150.0]], [1.0, 0.0])),
    "clicks alone": dict(points=([[70.0, 80.0], [30.0, 40.0]], [1.0, 0.0])),
    "clicks + mask": dict(points=([[70.0, 80.0]], [1.0]), mask=(40, 50, 140, 190)),
    "box, multimask": dict(boxes=[[10.0, 20.0, 120.0, 200.0]], multimask_output=True),
}


def _prompt(spec):
    kwargs = {"multimask_output": spec.get("multimask_output", False)}
    if "boxes" in spec:
        kwargs["boxes"] = torch.tensor(spec["boxes"])[:, None, :]
    if "points" in spec:
        coords, labels = spec["points"]
        kwargs["points"] = (torch.tensor([coords]), torch.tensor([labels]))
    if "mask" in spec:
        x0, y0, x1, y1 = spec["mask"]
        mask = torch.full((1, 1, 256, 256), -6.0)
        mask[..., y0:y1, x0:x1] = 6.0
        kwargs["masks"] = mask
    return kwargs


@pytest.fixture(scope="module")
def exact_net():
    return Session("litemedsam", "cpu", runtime="torch-exact").net


@pytest.fixture(scope="module")
def onnx_core(exact_net, tmp_path_factory):
    """The single-mask decoder core exported to ONNX (a tampered export is rebuilt, never run)."""
    folder = tmp_path_factory.mktemp("onnx")
    path = decoder_onnx(DecoderCore(exact_net), "litemedsam", "0" * 64, folder=folder)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    assert not is_valid(path)
    assert decoder_onnx(DecoderCore(exact_net), "litemedsam", "0" * 64, folder=folder) == path
    assert is_valid(path)
    return OrtDecoderCore(path, torch.device("cpu"))


@pytest.mark.parametrize("core", ["torch", "onnxruntime"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_prepared_decoder_is_the_plain_decoder(prompt, core, cases, reference, exact_net, request):
    """Boxes, clicks, mask prompts and multimask output on real embeddings: the rearranged decoder (attention
    through the token side, matrix-product upscaling), run by torch or as its ONNX export, gives the plain
    decoder's logits up to float rounding — the torch core within the prompts' region (`prompt_region`), outside
    it OUTSIDE_LOGIT where the plain decoder's logits are negative too (the same masks everywhere)."""
    prepared = PreparedDecoder(exact_net)
    if core == "onnxruntime":
        prepared.single = request.getfixturevalue("onnx_core")
    kwargs = _prompt(PROMPTS[prompt])
    region = prompt_region(256, (64, 64), kwargs.get("boxes"), kwargs.get("points"), kwargs.get("masks"))
    if core == "onnxruntime" and not kwargs["multimask_output"]:
        region = None  # the export computes every cell
    inside = torch.zeros(256, 256, dtype=torch.bool)
    r0, r1, c0, c1 = region or (0, 64, 0, 64)
    inside[4 * r0:4 * r1, 4 * c0:4 * c1] = True
    for embedding in reference[1]:
        plain = exact_net.decode(embedding, **kwargs)
        for _ in range(2):  # the second call reuses the embedding's image side
            fast = prepared(embedding, **kwargs)
            assert fast[0].shape == plain[0].shape and fast[1].shape == plain[1].shape
            assert float((fast[0] - plain[0])[..., inside].abs().max()) < 1e-3
            assert bool((fast[0][..., ~inside] == OUTSIDE_LOGIT).all() and (plain[0][..., ~inside] < 0).all())
            assert float((fast[1] - plain[1]).abs().max()) < 1e-4
            assert float(((fast[0] > 0) != (plain[0] > 0)).float().mean()) < 1e-4


@pytest.mark.parametrize("prompt", PROMPTS)
def test_bf16_decoder_keeps_the_masks(prompt, reference, exact_net):
    """The prepared decoder in bfloat16 (the torch-bf16 runtime; emulated where the CPU lacks bf16 instructions) on
    real embeddings, every prompt kind: float32 logits of the same shape, the same masks up to a few boundary
    pixels, the same IoU predictions to 0.02."""
    prepared = PreparedDecoder(exact_net, image_dtype=torch.bfloat16)
    kwargs = _prompt(PROMPTS[prompt])
    for embedding in reference[1]:
        plain = exact_net.decode(embedding, **kwargs)
        fast = prepared(embedding, **kwargs)
        assert fast[0].dtype == torch.float32 and fast[0].shape == plain[0].shape
        assert float((fast[1] - plain[1]).abs().max()) < 0.02
        ours, theirs = (fast[0] > 0).numpy(), (plain[0] > 0).numpy()
        assert (ours != theirs).mean() < 2e-3
        if theirs.sum() >= 100:
            assert dice(ours, theirs) >= 0.97
    assert exact_net.mask_decoder.iou_token.weight.dtype == torch.float32  # the net's decoder is untouched


def test_the_prompt_region_holds_the_box_and_its_mask_prompt_with_a_margin():
    """A box (and its mask prompt's positive pixels), 4 cells + a quarter of their extent around them, on the grid's
    cells and inside it; prompts with clicks, or without a box, bound nothing (every cell)."""
    box = torch.tensor([[[100.0, 100.0, 140.0, 120.0]]])
    assert prompt_region(256, (64, 64), box, None, None) == (18, 37, 18, 42)
    assert prompt_region(256, (64, 64), torch.tensor([[[0.0, 0.0, 250.0, 30.0]]]), None, None) == (0, 28, 0, 64)
    assert prompt_region(256, (64, 64), torch.tensor([[[300.0, 300.0, 310.0, 310.0]]]), None, None) == (63, 64, 63, 64)
    click = (torch.tensor([[[200.0, 110.0]]]), torch.tensor([[1]]))
    assert prompt_region(256, (64, 64), box, click, None) is None
    assert prompt_region(256, (64, 64), None, click, None) is None
    mask = torch.full((1, 1, 256, 256), -6.0)
    mask[..., 10:20, 30:40] = 6.0
    assert prompt_region(256, (64, 64), None, None, mask) is None
    assert prompt_region(256, (64, 64), box, None, mask) == (0, 42, 0, 47)  # the mask widens the region
    assert prompt_region(512, (64, 64), box * 2, None, None) == (18, 37, 18, 42)  # the same box at 512: 8 px cells
    window = Window(x0=64, y0=96, size=96, stride=4)  # a crop's grid: 24 x 24 cells from cell (24, 16)
    assert prompt_region(256, (24, 24), torch.tensor([[[100.0, 120.0, 120.0, 140.0]]]), None, None, window) == (0, 17, 3, 20)


def test_the_upscaling_computes_the_region_only(reference, exact_net):
    """Within the region the core's logits are those of the whole upscaling; the rest is OUTSIDE_LOGIT."""
    prepared = PreparedDecoder(exact_net)
    side = prepared.image_side(reference[1][0])
    with torch.inference_mode():
        sparse, _ = exact_net.prompt_encoder(boxes=torch.tensor([[[100.0, 100.0, 140.0, 120.0]]]))
        whole, iou = prepared.core(side.keys, side.keys_pe, sparse[0])
        part, part_iou = prepared.core(side.keys, side.keys_pe, sparse[0], region=(19, 36, 19, 44))
    assert torch.equal(iou, part_iou)
    assert float((part[:, 76:144, 76:176] - whole[:, 76:144, 76:176]).abs().max()) < 1e-5
    outside = torch.ones(part.shape[-2:], dtype=torch.bool)
    outside[76:144, 76:176] = False
    assert bool((part[:, outside] == OUTSIDE_LOGIT).all())


def test_bf16_runtime_is_refused_where_bf16_is_emulated(monkeypatch):
    import FastMedSAMLib.runtime.device as device_module
    import FastMedSAMLib.session as session_module

    def no_load(*_args, **_kwargs):
        raise AssertionError("weights were loaded for a runtime that cannot run well here")

    monkeypatch.setattr(device_module, "native_bf16", lambda device: False)
    monkeypatch.setattr(session_module, "load_model", no_load)
    with pytest.raises(RuntimeChoiceError, match="bfloat16 matrix instructions"):
        Session("litemedsam", "cpu", runtime="torch-bf16")


def test_unknown_runtime_fails_before_loading():
    with pytest.raises(RuntimeChoiceError, match="unknown runtime"):
        Session("litemedsam", "cpu", runtime="tensorrt")


def test_gpu_runtime_on_the_cpu_fails_before_loading(monkeypatch):
    import FastMedSAMLib.session as session_module

    def no_load(*_args, **_kwargs):
        raise AssertionError("weights were loaded for a runtime that cannot run here")

    monkeypatch.setattr(session_module, "load_model", no_load)
    with pytest.raises(RuntimeChoiceError, match="CUDA GPUs"):
        Session("litemedsam", "cpu", runtime="torch-fp16")


def test_autocast_encoder_keeps_the_masks(cases, reference):
    """The half-precision encoder's mechanics on the CPU (bfloat16 autocast, the CPU's half type; float16 is
    measured on a GPU): float32 embeddings out, masks close to torch-exact's."""
    session = Session("litemedsam", "cpu", runtime="torch-exact")
    session._engine.encoder = AutocastEncoder(session.net.encode, "cpu", torch.bfloat16)
    session._engine.encoder_tag = "bf16"
    for (image, box), expected in zip(cases[:2], reference[0][:2]):
        session.set_image(image)
        mask = session.predict(box=box).mask
        assert dice(mask, expected) >= 0.97
    embedding = session.cache.get(("bf16", (session._image_key, cases[1][1].z)))[0]
    assert embedding.dtype == torch.float32


def test_propagation_encoding_several_slices_per_call_gives_the_same_volume(cases):
    image, box = cases[1]
    box3d = Box3D(box.x0, box.y0, box.z - 2, box.x1, box.y1, box.z + 2)
    volumes = []
    for batch in (1, 3):
        session = Session("litemedsam", "cpu", runtime="torch-exact")
        session._engine.encode_batch = batch
        session.set_image(image)
        result = session.predict(box=box3d)
        assert result.encoder_calls == 5
        volumes.append(result.mask)
    assert dice(volumes[0], volumes[1]) >= 0.999 and volumes[0].any()


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)))


def _run(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_tampered_or_truncated_onnx_export_is_rebuilt(tmp_path):
    torch.manual_seed(0)
    net = _Tiny().eval()
    x = torch.rand(1, 3, 8, 8)
    path = encoder_onnx(net, "tiny", "0" * 64, 8, folder=tmp_path)
    assert is_valid(path)
    good = path.read_bytes()
    np.testing.assert_allclose(_run(path, x), net(x).detach().numpy(), atol=1e-5)

    tampered = bytearray(good)
    tampered[len(tampered) // 2] ^= 0xFF
    path.write_bytes(bytes(tampered))
    assert not is_valid(path)
    assert encoder_onnx(net, "tiny", "0" * 64, 8, folder=tmp_path) == path
    assert path.read_bytes() == good and is_valid(path)

    path.write_bytes(good[:100])  # truncated by a crash, sidecar left behind
    encoder_onnx(net, "tiny", "0" * 64, 8, folder=tmp_path)
    assert path.read_bytes() == good

    path.with_name(path.name + ".sha256").unlink()  # no sidecar: not trusted either
    encoder_onnx(net, "tiny", "0" * 64, 8, folder=tmp_path)
    assert is_valid(path)

    quantized = encoder_onnx(net, "tiny", "0" * 64, 8, int8=True, folder=tmp_path)
    assert quantized.name == "encoder.int8.onnx" and is_valid(quantized)
    assert np.abs(_run(quantized, x) - net(x).detach().numpy()).max() < 0.1


def test_export_folder_is_keyed_by_weights_and_tool_versions():
    import onnxruntime

    a, b = export_dir("litemedsam", "a" * 64), export_dir("litemedsam", "b" * 64)
    assert a != b  # new weights: a new export, the old one is never found
    assert torch.__version__.split("+")[0] in a.name and onnxruntime.__version__ in a.name


def test_pause_still_works_on_every_runtime(cases, reference):
    image, box = cases[1]
    for runtime in ("torch", "onnxruntime"):
        session = Session("litemedsam", "cpu", runtime=runtime, pause=0.25)
        session.set_image(image)
        paused = session.predict(box=box)
        assert paused.paused_fraction > 0.0 and dice(paused.mask, reference[0][1]) > 0.9
        session.set_pause(0)
        assert dice(session.predict(box=box).mask, reference[0][1]) >= 0.995




def test_fused_encoder_row_blocks_change_nothing(cases, monkeypatch):
    """The fused encoder's CPU row blocks (MBConv / merge stripes with their halo rows, token-MLP blocks) give the
    whole-map computation's embedding bit for bit on a real slice."""
    from FastMedSAMLib.pause import tinyvit_paused
    from FastMedSAMLib.runtime.fused import FusedEncoder

    session = Session("litemedsam", "cpu", runtime="torch-exact")
    image, box = cases[1]
    session.set_image(image)
    tensor, _ = session._engine.adapter.preprocess(np.repeat(session._u8[box.z][:, :, None], 3, axis=2))
    encoder = FusedEncoder(session.net.image_encoder)
    blocked = encoder(tensor)
    monkeypatch.setattr(tinyvit_paused, "STRIPE_ROWS", 10**6)
    monkeypatch.setattr(tinyvit_paused, "MLP_ROWS", 10**9)
    assert torch.equal(encoder(tensor), blocked)
    assert float((session.net.encode(tensor) - blocked).abs().max()) < 1e-3


def test_prepared_decoder_in_one_block_is_the_same(exact_net, reference, monkeypatch):
    """A GPU runs the decoder's row-wise work as one block (launches, not cache, are its cost): same logits."""
    from FastMedSAMLib.runtime import decoder

    kwargs = _prompt(PROMPTS["box + clicks"])
    blocked = PreparedDecoder(exact_net)(reference[1][0], **kwargs)[0]
    monkeypatch.setattr(decoder, "BLOCK_BYTES", 10**12)
    assert len(decoder._blocks(torch.zeros(4096, 1))) == 1
    whole = PreparedDecoder(exact_net)(reference[1][0], **kwargs)[0]
    assert float((whole - blocked).abs().max()) < 1e-4
