"""MedficientSAM L0/L1/L2 parity with the reference fixtures (shared/parity/RECIPE.md) and its 2D pre/post-processing."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from FastMedSAMLib.errors import ImageError
from FastMedSAMLib.models import build_model
from FastMedSAMLib.models.base import Frame
from FastMedSAMLib.models.medficientsam import MedficientSAMAdapter
from FastMedSAMLib.models.recipe import encode_with_probes, fixture_image, recipe_checksum, recipe_state_dict
from FastMedSAMLib.models.sam2d import LayerNorm2d

VARIANTS = ("l0", "l1", "l2")
RECIPES = ("base", "gain")
REL_TOL = 5e-5  # of max|ref| (RECIPE §5)
PE_ATOL = 1e-5
PROBE_RTOL = 1e-5
NORM_TYPES = (nn.BatchNorm2d, nn.LayerNorm, LayerNorm2d)
OUTPUTS = (
    "image_embeddings",
    "image_pe_sub8",
    "sparse_embeddings_1",
    "dense_embeddings_1",
    "low_res_masks_1",
    "iou_predictions_1",
    "iou_predictions_all_1",
)


@dataclass
class Run:
    """One model built once, run under both recipes; everything the tests compare."""

    variant: str
    layout: List[Tuple[str, List[int], str]]
    norm_eps: Dict[str, List]
    fixtures: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    checksums: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    outputs: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    probes: Dict[str, Dict[str, float]] = field(default_factory=dict)


def _fixture_paths(parity_dir: Path, variant: str, recipe: str) -> Tuple[Path, Path, Path]:
    stem = parity_dir / f"medficientsam_{variant}"
    io = Path(f"{stem}.io.npz") if recipe == "base" else Path(f"{stem}.gain.io.npz")
    return Path(f"{stem}.keys.json"), Path(f"{stem}.int_buffers.npz"), io


@torch.inference_mode()
def _run_recipe(model: nn.Module, io: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
    image = fixture_image(io)
    model.image_encoder(image)  # warm-up: the first forward of this torch build is occasionally off (RECIPE §5)
    embedding, abs_sums = encode_with_probes(model, image, [str(n) for n in io["probe_names"]])
    box = torch.from_numpy(io["box_1"])
    sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
    pe = model.prompt_encoder.get_dense_pe()
    stored = torch.from_numpy(io["image_embeddings"])
    masks, iou = model.mask_decoder(stored, pe, sparse, dense, multimask_output=False)
    _, iou_all = model.mask_decoder.predict_masks(stored, pe, sparse, dense)
    outputs = {
        "image_embeddings": embedding,
        "image_pe_sub8": pe[:, :, ::8, ::8],
        "sparse_embeddings_1": sparse,
        "dense_embeddings_1": dense,
        "low_res_masks_1": masks,
        "iou_predictions_1": iou,
        "iou_predictions_all_1": iou_all,
    }
    return {k: v.clone().numpy() for k, v in outputs.items()}, abs_sums  # clone: dense is a view of a weight


@pytest.fixture(scope="module", params=VARIANTS)
def run(request, parity_dir: Path) -> Run:
    variant = request.param
    model = build_model(f"medficientsam-{variant}")
    result = Run(
        variant=variant,
        layout=[(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()],
        norm_eps={n: [type(m).__name__, m.eps] for n, m in model.named_modules() if isinstance(m, NORM_TYPES)},
    )
    for recipe in RECIPES:
        keys_json, int_buffers, io_path = _fixture_paths(parity_dir, variant, recipe)
        state = recipe_state_dict(keys_json, int_buffers, gain=recipe == "gain")
        result.checksums[recipe] = recipe_checksum(state)
        model.load_state_dict(state, strict=True)
        model.eval()
        with np.load(io_path) as npz:
            result.fixtures[recipe] = {k: npz[k] for k in npz.files}
        result.outputs[recipe], result.probes[recipe] = _run_recipe(model, result.fixtures[recipe])
    return result


def test_state_dict_layout(run: Run, parity_dir: Path) -> None:
    expected = [(e[0], e[1], e[2]) for e in json.loads((parity_dir / f"medficientsam_{run.variant}.keys.json").read_text(encoding="utf-8"))]
    assert run.layout == expected


def test_norm_eps(run: Run, parity_dir: Path) -> None:
    expected = json.loads((parity_dir / f"medficientsam_{run.variant}.norm_eps.json").read_text(encoding="utf-8"))
    assert run.norm_eps == expected


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_checksum(run: Run, recipe: str) -> None:
    expected = run.fixtures[recipe]["recipe_checksum"]
    np.testing.assert_allclose(run.checksums[recipe], expected, rtol=1e-9)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("name", OUTPUTS)
def test_outputs(run: Run, recipe: str, name: str) -> None:
    ref = run.fixtures[recipe][name]
    out = run.outputs[recipe][name]
    assert out.shape == ref.shape and out.dtype == ref.dtype == np.float32
    error = float(np.abs(out - ref).max())
    tolerance = PE_ATOL if name in ("image_pe_sub8", "sparse_embeddings_1") else REL_TOL * float(np.abs(ref).max())
    assert error <= tolerance, f"{name}: max|diff| {error:.3e} > {tolerance:.3e}"


@pytest.mark.parametrize("recipe", RECIPES)
def test_encoder_probes(run: Run, recipe: str) -> None:
    io = run.fixtures[recipe]
    for name, stats in zip(io["probe_names"], io["probe_stats"]):
        assert run.probes[recipe][name] == pytest.approx(stats[1], rel=PROBE_RTOL), name


# --- pre/post-processing on a real image -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dermoscopy(manifest_path: Path, data_dir: Path) -> Tuple[np.ndarray, np.ndarray]:
    """A 450x600 RGB dermoscopy image and its lesion mask."""
    entry = next(e for e in json.loads(manifest_path.read_text(encoding="utf-8")) if e["modality"] == "Dermoscopy")
    rgb = cv2.cvtColor(cv2.imread(str(data_dir / entry["image"]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    mask = cv2.imread(str(data_dir / entry["label"]), cv2.IMREAD_GRAYSCALE) > 0
    assert rgb.shape[:2] == mask.shape and max(rgb.shape[:2]) != 512 and mask.any()
    return rgb, mask


def test_preprocess_resizes_scales_and_pads(dermoscopy) -> None:
    rgb, _ = dermoscopy
    tensor, frame = MedficientSAMAdapter().preprocess(rgb)
    h, w = rgb.shape[:2]
    assert tensor.shape == (1, 3, 512, 512) and tensor.dtype == torch.float32
    assert frame == Frame(h, w, int(h * 512 / w + 0.5), 512, 512)
    x = tensor[0].numpy()
    inside = x[:, : frame.resized_height, : frame.resized_width]
    assert inside.min() == 0.0 and inside.max() == 1.0
    assert not x[:, frame.resized_height :].any() and not x[:, :, frame.resized_width :].any()
    # An independent bilinear resize (half-pixel centres, fixed-point uint8) agrees to one grey level; min and max
    # may each move by a level too. A one-pixel shift or swapped channels would differ by tens of levels.
    expected = cv2.resize(rgb, (frame.resized_width, frame.resized_height), interpolation=cv2.INTER_LINEAR)
    expected = expected.astype(np.float32).transpose(2, 0, 1)
    levels = expected.max() - expected.min()
    expected = (expected - expected.min()) / levels
    assert np.abs(inside - expected).max() <= 2.5 / levels


def test_preprocess_without_resize_is_exact_min_max(dermoscopy) -> None:
    rgb = np.ascontiguousarray(dermoscopy[0][:, :512])  # long side already 512: no resize
    tensor, frame = MedficientSAMAdapter().preprocess(rgb)
    assert (frame.resized_height, frame.resized_width) == rgb.shape[:2]
    x = rgb.astype(np.float32).transpose(2, 0, 1)
    expected = (x - x.min()) / (x.max() - x.min())
    np.testing.assert_array_equal(tensor[0, :, : rgb.shape[0]].numpy(), expected)


def test_preprocess_rejects_non_rgb(dermoscopy) -> None:
    rgb, _ = dermoscopy
    with pytest.raises(ImageError):
        MedficientSAMAdapter().preprocess(rgb[:, :, 0])
    with pytest.raises(ImageError):
        MedficientSAMAdapter().preprocess(rgb.astype(np.float32))


def test_box_maps_into_512_frame(dermoscopy) -> None:
    rgb, mask = dermoscopy
    _, frame = MedficientSAMAdapter().preprocess(rgb)
    ys, xs = np.nonzero(mask)
    box = frame.box_to_frame(xs.min(), ys.min(), xs.max(), ys.max())
    scale = 512 / max(mask.shape)
    np.testing.assert_array_equal(box, [[int(xs.min() * scale), int(ys.min() * scale), int(xs.max() * scale), int(ys.max() * scale)]])
    resized = cv2.resize(mask.astype(np.uint8), (frame.resized_width, frame.resized_height), interpolation=cv2.INTER_NEAREST)
    rys, rxs = np.nonzero(resized)
    np.testing.assert_allclose(box[0], [rxs.min(), rys.min(), rxs.max(), rys.max()], atol=2)


def test_postprocess_round_trip(dermoscopy) -> None:
    """Ground truth carried into the 256 low-res frame as logits comes back onto the original pixel grid."""
    rgb, mask = dermoscopy
    adapter = MedficientSAMAdapter()
    _, frame = adapter.preprocess(rgb)
    framed = np.zeros((512, 512), np.float32)
    framed[: frame.resized_height, : frame.resized_width] = cv2.resize(
        mask.astype(np.float32), (frame.resized_width, frame.resized_height), interpolation=cv2.INTER_AREA
    )
    low_res = cv2.resize(framed, (256, 256), interpolation=cv2.INTER_AREA) * 2 - 1
    low_res[frame.resized_height // 2 + 1 :] = 10.0  # the padded rows must be cropped away
    out = adapter.postprocess(torch.from_numpy(low_res)[None, None], frame)
    assert out.shape == mask.shape and out.dtype == bool
    dice = 2 * (out & mask).sum() / (out.sum() + mask.sum())
    assert dice > 0.98
