"""Prompt crops (`Session(crop=F)`, `models/window.py`): a window of the frame around the box is encoded on its own,
at the frame's scale. The window's geometry, the fused and paused encoders on any window size (equal to the eager
TinyViT), the prepared decoder on a window (equal to the plain one), and on real CT / X-ray data: masks close to the
whole-frame ones against ground truth, in 2D and in propagation, from fewer tokens, the same on a repeat; bad
settings refused before any weights load."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pytest
import torch

from FastMedSAMLib import Box, Box3D, Session
from FastMedSAMLib.engines.slice_engine import to_rgb
from FastMedSAMLib.errors import RuntimeChoiceError
from FastMedSAMLib.evaluation.metrics import dice
from FastMedSAMLib.io.images import read_image, read_label
from FastMedSAMLib.models.window import MIN_SIZE, OUTSIDE_LOGIT, SIZE_STEP, Window, validate_crop
from FastMedSAMLib.runtime.decoder import PreparedDecoder, prompt_region
from FastMedSAMLib.runtime.fused import FusedEncoder

LESION = ("ct_deeplesion_medsam2", "CT_Lesion_000015_01_01_103-115.npz")


def _gt_box(gt: np.ndarray, z=None) -> Box:
    ys, xs = np.nonzero(gt)
    return Box(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()), z=z)


def test_window_sits_on_the_grid_inside_the_frame_around_the_box():
    small = Window.around((100, 120, 110, 126), 3.0, 256, 4)
    assert small.size == MIN_SIZE and small.x0 % 4 == 0 and small.y0 % 4 == 0
    assert small.x0 <= 100 and small.x0 + small.size >= 110 and small.y0 <= 120 and small.y0 + small.size >= 126
    mid = Window.around((10, 200, 70, 250), 2.0, 256, 4)  # 60 px side x 2 -> 128, pushed inside at both edges
    assert (mid.size, mid.x0, mid.y0) == (128, 0, 128) and mid.size % SIZE_STEP == 0
    assert Window.around((0, 0, 200, 150), 2.0, 256, 4).covers(256)
    assert not mid.covers(256)


def test_window_cuts_and_pastes_the_grid_in_place():
    window = Window(x0=32, y0=64, size=96, stride=4)
    grid = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64)
    cells = window.cells(grid)
    assert cells.shape[-2:] == (24, 24) and cells[0, 0, 0, 0] == grid[0, 0, 16, 8]
    image = torch.rand(1, 3, 256, 256)
    assert torch.equal(window.pixels(image), image[:, :, 64:160, 32:128])
    logits = torch.randn(1, 1, 96, 96)
    full = window.paste(logits, 256)
    assert full.shape == (1, 1, 256, 256) and torch.equal(full[:, :, 64:160, 32:128], logits)
    full[:, :, 64:160, 32:128] = OUTSIDE_LOGIT
    assert bool((full == OUTSIDE_LOGIT).all())
    half = window.paste(torch.randn(1, 1, 48, 48), 512 // 2)  # a decoder at half the frame's resolution
    assert half.shape[-1] == 128 and bool((half[:, :, 32:80, 16:64] != OUTSIDE_LOGIT).all())


@pytest.mark.parametrize("crop", [0.5, 0.0, 17.0, float("nan"), "3", True])
def test_bad_crop_factors_are_refused_before_any_weights_load(crop):
    with pytest.raises(RuntimeChoiceError, match="crop"):
        validate_crop(crop)
    with pytest.raises(RuntimeChoiceError, match="crop"):
        Session("no-such-model", "cpu", crop=crop)  # the factor fails before the registry is read


@pytest.fixture(scope="module")
def lesion(data_dir, litemedsam_checkpoint) -> Tuple[object, np.ndarray]:
    path = data_dir.joinpath(*LESION)
    return read_image(path), read_label(f"{path}::gts").array > 0


def test_crop_is_refused_for_models_and_runtimes_that_encode_whole_frames(litemedsam_checkpoint):
    with pytest.raises(RuntimeChoiceError, match="box prompts"):
        Session("litemedsam-refine", "cpu", crop=3.0)
    with pytest.raises(RuntimeChoiceError, match="torch runtime"):
        Session("litemedsam", "cpu", runtime="onnxruntime", crop=3.0)


def test_fused_and_paused_encoders_take_any_window_like_the_eager_tinyvit(lesion):
    image, gt = lesion
    session = Session("litemedsam", "cpu", runtime="torch-exact")
    session.set_image(image)
    z = int(np.nonzero(gt.any(axis=(1, 2)))[0][0])
    frame, _ = session._engine.adapter.preprocess(to_rgb(session._u8[z]))
    fused = FusedEncoder(session.net.image_encoder)
    for size in (64, 96, 160, 72):  # 72: windows of the attention that do not tile the grid
        crop = frame[:, :, 40:40 + size, 60:60 + size].contiguous()
        eager, folded = session.net.encode(crop), fused(crop)
        assert folded.shape == eager.shape == (1, 256, size // 4, size // 4)
        assert float((folded - eager).abs().max()) < 1e-4 * float(eager.abs().max())
    session.set_pause(0.5)
    paused = session._engine.encoder(frame[:, :, :128, :128].contiguous())
    assert paused.shape == (1, 256, 32, 32)
    assert 0.0 < np.mean(session._engine.encoder.last_stats.paused_fraction()) < 1.0


def test_prepared_decoder_on_a_window_equals_the_plain_decoder(lesion):
    image, gt = lesion
    session = Session("litemedsam", "cpu", runtime="torch-exact")
    session.set_image(image)
    z = int(np.nonzero(gt.any(axis=(1, 2)))[0][len(np.nonzero(gt.any(axis=(1, 2)))[0]) // 2])
    frame, _ = session._engine.adapter.preprocess(to_rgb(session._u8[z]))
    window = Window(x0=96, y0=64, size=96, stride=4)
    embedding = session.net.encode(window.pixels(frame).contiguous())
    prepared = PreparedDecoder(session.net)
    box = torch.tensor([[[120.0, 90.0, 150.0, 130.0]]])
    points = (torch.tensor([[[135.0, 110.0], [100.0, 70.0]]]), torch.tensor([[1, 0]]))
    previous = torch.zeros(1, 1, 256, 256)
    previous[:, :, 95:125, 125:145] = 8.0
    for prompts in ({"boxes": box}, {"boxes": box, "points": points, "masks": previous}, {"points": points}):
        r0, r1, c0, c1 = prompt_region(256, (24, 24), prompts.get("boxes"), prompts.get("points"),
                                       prompts.get("masks"), window) or (0, 24, 0, 24)
        inside = torch.zeros(96, 96, dtype=torch.bool)
        inside[4 * r0:4 * r1, 4 * c0:4 * c1] = True
        for multimask in (False, True):
            want, want_iou = session.net.decode(embedding, multimask_output=multimask, window=window, **prompts)
            got, got_iou = prepared(embedding, multimask_output=multimask, window=window, **prompts)
            assert got.shape == want.shape == (1, 3 if multimask else 1, 96, 96)
            assert float((got - want)[..., inside].abs().max()) < 1e-3
            assert float((got_iou - want_iou).abs().max()) < 1e-4
            assert bool((got[..., ~inside] == OUTSIDE_LOGIT).all() and (want[..., ~inside] < 0).all())


def _slices(data_dir, lesion) -> List[Tuple[object, Box, np.ndarray]]:
    """(image, box, ground truth) on three lesion slices and the right lung of a chest X-ray."""
    image, gt = lesion
    zs = [z for z in range(gt.shape[0]) if gt[z].any()]
    out = [(image, _gt_box(gt[z], z), gt[z]) for z in (zs[0], zs[len(zs) // 2], zs[-1])]
    lungs = read_label(data_dir / "xray_lung" / "masks_bin" / "CHNCXR_0001_0.png").array > 0
    lungs = lungs.reshape(lungs.shape[-2:])
    right = lungs.copy()
    right[:, lungs.shape[1] // 2:] = False
    out.append((read_image(data_dir / "xray_lung" / "cxr" / "CHNCXR_0001_0.png"), _gt_box(right), right))
    return out


def test_a_crop_segments_real_slices_like_the_whole_frame_from_fewer_tokens(data_dir, lesion):
    whole, cropped = Session("litemedsam", "cpu", runtime="torch"), Session("litemedsam", "cpu", runtime="torch", crop=3.0)
    scores = []
    for image, box, gt in _slices(data_dir, lesion):
        whole.set_image(image)
        cropped.set_image(image)
        first = cropped.predict(box=box)
        again = cropped.predict(box=box)
        assert first.encoder_calls == 1 and again.encoder_calls == 0 and np.array_equal(first.mask, again.mask)
        scores.append((dice(whole.predict(box=box).mask, gt), dice(first.mask, gt)))
    cells = [value[0].shape[-1] for _, value in cropped.cache.items()]
    assert min(cells) < 64  # the lesions' windows are a fraction of the frame; the lung's box covers it
    whole_dice, crop_dice = np.mean(scores, axis=0)  # the first lesion slice is a few pixels: ~0.1 either way
    assert crop_dice > whole_dice - 0.03 and min(s[1] for s in scores[1:]) > 0.6, scores


def test_a_cropped_propagation_follows_the_lesion_through_the_volume(lesion):
    image, gt = lesion
    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    ys, xs = np.nonzero(gt.any(axis=0))
    box = Box3D(int(xs.min()), int(ys.min()), int(zs[0]), int(xs.max()), int(ys.max()), int(zs[-1]))
    scores = []
    for crop in (None, 3.0):
        session = Session("litemedsam", "cpu", runtime="torch", crop=crop)
        session.set_image(image)
        prediction = session.predict(box=box)
        assert prediction.encoder_calls == len(zs)
        scores.append(dice(prediction.mask, gt))
    assert scores[1] > 0.7 and scores[1] > scores[0] - 0.05, scores


def test_crop_is_refused_by_the_click_protocols(capsys):
    from FastMedSAMLib.cli import main

    assert main(["eval", "--protocol", "refine", "--crop", "3"]) == 2
    assert "--crop is for the box protocol" in capsys.readouterr().err
