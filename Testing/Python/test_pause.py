"""Token pausing (FastMedSAMLib.pause) with the real LiteMedSAM weights, the committed heads and real images."""
from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from FastMedSAMLib.engines.slice_engine import to_rgb
from FastMedSAMLib.errors import FastMedSAMError, WeightsError
from FastMedSAMLib.evaluation.metrics import dice
from FastMedSAMLib.io.intensity import to_uint8
from FastMedSAMLib.io.manifest import load_image, load_label, read_manifest, targets
from FastMedSAMLib.models import build_model, load_model
from FastMedSAMLib.models.litemedsam import LiteMedSAMAdapter
from FastMedSAMLib.models.vit3d import PreNormBlock3D
from FastMedSAMLib.pause import PauseError, heads_path, load_pause_heads, paused_encoder, validate_pause
from FastMedSAMLib.pause.heads import load_heads
from FastMedSAMLib.pause.tinyvit_paused import PausedTinyViT
from FastMedSAMLib.pause.vit3d_paused import PausedViT3D, paused_block
from FastMedSAMLib.weights.registry import get_spec


@pytest.fixture(scope="module")
def net(litemedsam_checkpoint):
    return load_model("litemedsam", weights=litemedsam_checkpoint)


@pytest.fixture(scope="module")
def heads():
    return load_pause_heads("litemedsam")


def _case(manifest_path: Path, image_name: str):
    """(encoder input, frame, [(frame box, ground-truth mask)]) for a 2D manifest entry."""
    entry = next(e for e in read_manifest(manifest_path) if e.image_name == image_name)
    image, label = load_image(entry), load_label(entry)
    adapter = LiteMedSAMAdapter()
    tensor, frame = adapter.preprocess(to_rgb(to_uint8(image)))
    found = sorted(targets(entry, label), key=lambda t: -int(t.mask(label).sum()))
    return tensor, frame, [(frame.box_to_frame(t.box.x0, t.box.y0, t.box.x1, t.box.y1), t.mask(label)) for t in found]


@pytest.fixture(scope="module")
def btcv(manifest_path):
    return _case(manifest_path, "ct_2d_btcv_imis/images/ABD_001_120.png")


@pytest.fixture(scope="module")
def xray(manifest_path):
    return _case(manifest_path, "xray_lung/cxr/CHNCXR_0001_0.png")


def _dices(net, embedding, frame, cases):
    adapter = LiteMedSAMAdapter()
    out = []
    for box, truth in cases:
        low_res, _ = net.decode(embedding, boxes=torch.as_tensor(box)[:, None, :])
        out.append(dice(adapter.postprocess(low_res, frame), truth))
    return np.array(out)


# -- pause = 0 is the plain model ------------------------------------------------------------------------------
def test_pause_zero_is_bitwise_the_plain_encoder_and_never_runs_the_paused_path(net, data_dir, monkeypatch):
    from FastMedSAMLib import Box, Session
    from FastMedSAMLib.io.images import read_image

    def refuse(*args, **kwargs):
        raise AssertionError("the paused code path ran at pause=0")

    image = read_image(data_dir / "xray_lung" / "cxr" / "CHNCXR_0001_0.png")
    box = Box(40, 60, 200, 400)
    plain = Session(model="litemedsam", device="cpu", runtime="torch-exact")
    plain.set_image(image)
    expected = plain.predict(box=box).mask
    monkeypatch.setattr(PausedTinyViT, "forward", refuse)
    assert paused_encoder(net, "litemedsam", 0) is None
    for knob in (0, 0.0):
        session = Session(model="litemedsam", device="cpu", pause=knob, runtime="torch-exact")
        session.set_image(image)
        np.testing.assert_array_equal(session.predict(box=box).mask, expected)


def test_paused_path_with_nothing_paused_matches_the_plain_encoder(net, btcv):
    """BatchNorm folding and the fused kernels change nothing but float rounding."""
    runner = PausedTinyViT(net.image_encoder).eval()
    with torch.inference_mode():
        plain = net.image_encoder(btcv[0])
        fast, stats = runner(btcv[0])
    assert stats.tokens == stats.grid_tokens
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)


# -- paused tokens leave the computation -----------------------------------------------------------------------
def test_paused_tokens_leave_attention_queries_and_mlps(net, heads, btcv):
    """Count, with hooks on the encoder's own modules, the tokens entering every block's MLP and the windows
    entering its qkv projection; they must be the active tokens the paused forward reports, and fewer than the
    grid once tokens paused."""
    encoder = paused_encoder(net, "litemedsam", 0.5, heads=heads)
    blocks = [b for stage in net.image_encoder.layers[1:] for b in stage.blocks]
    mlp_rows, qkv_windows = [0] * len(blocks), [0] * len(blocks)
    hooks = []
    for i, block in enumerate(blocks):
        hooks.append(block.mlp.fc2.register_forward_hook(lambda m, a, o, i=i: mlp_rows.__setitem__(i, mlp_rows[i] + a[0].shape[0])))
        hooks.append(block.attn.qkv.register_forward_hook(lambda m, a, o, i=i: qkv_windows.__setitem__(i, qkv_windows[i] + a[0].shape[0])))
    try:
        encoder(btcv[0])
    finally:
        for hook in hooks:
            hook.remove()
    stats = encoder.last_stats
    assert mlp_rows == stats.tokens
    assert qkv_windows == stats.windows
    assert all(t <= g for t, g in zip(stats.tokens, stats.grid_tokens))
    assert stats.tokens[-1] < stats.grid_tokens[-1] // 2  # most tokens paused before the last block
    assert encoder.paused_fraction() > 0.2
    depths = stats.pause_depths
    assert set(depths.unique().tolist()) <= set(heads.depths) | {len(blocks)}
    assert int((depths == len(blocks)).sum()) == stats.tokens[-1]  # never paused = active in the last block


def test_pause_one_pauses_everything_at_the_first_head(net, heads, btcv):
    encoder = paused_encoder(net, "litemedsam", 1.0, heads=heads)
    calls = []
    hooks = [b.mlp.fc2.register_forward_hook(lambda *a: calls.append(1))
             for stage in net.image_encoder.layers[1:] for b in stage.blocks]
    try:
        embedding = encoder(btcv[0])
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []
    assert encoder.last_stats.tokens == [0] * 10
    assert embedding.shape == (1, 256, 64, 64) and torch.isfinite(embedding).all()


def test_knob_pauses_more_as_it_rises(net, heads, xray):
    skipped = []
    for pause in (0.1, 0.25, 0.5, 0.75):
        encoder = paused_encoder(net, "litemedsam", pause, heads=heads)
        encoder(xray[0])
        skipped.append(encoder.paused_fraction())
    assert skipped == sorted(skipped) and skipped[-1] > skipped[0] + 0.3


# -- real data: a moderate knob keeps Dice ---------------------------------------------------------------------
def test_moderate_knob_keeps_dice_on_real_cases(net, heads, btcv, xray):
    """pause = 0.15 (15% of the token work paused on unseen images, see calibrate.py) on a CT slice (3 largest
    organs) and a chest X-ray (both lungs, each lung): Dice stays within 5 points per object and 2 points on average
    of the unpaused model's. (At 0.25 one X-ray lung loses 7 points: X-rays are among the first to suffer.)"""
    plain, paused = [], []
    for tensor, frame, cases in (btcv, xray):
        cases = cases[:3]
        with torch.inference_mode():
            plain.append(_dices(net, net.image_encoder(tensor), frame, cases))
            encoder = paused_encoder(net, "litemedsam", 0.15, heads=heads)
            paused.append(_dices(net, encoder(tensor), frame, cases))
        assert encoder.paused_fraction() > 0.05
    plain, paused = np.concatenate(plain), np.concatenate(paused)
    assert plain.min() > 0.8
    assert np.abs(paused - plain).max() < 0.05, (plain, paused)
    assert np.abs(paused - plain).mean() < 0.02, (plain, paused)


# -- the heads file --------------------------------------------------------------------------------------------
def test_committed_heads_match_the_registry_sha256():
    spec = get_spec("litemedsam-pause-heads")
    path = heads_path("litemedsam")
    assert spec.sha256 is not None
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert path.stat().st_size == spec.size


def test_tampered_heads_are_refused(tmp_path):
    original = heads_path("litemedsam")
    tampered = tmp_path / original.name
    shutil.copyfile(original, tampered)
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_pause_heads("litemedsam", path=tampered)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(original.read_bytes()[:1000])
    with pytest.raises(WeightsError):
        load_heads(truncated, None)


# -- the knob ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf, "0.5", None, True, [0.5]])
def test_bad_knob_values_get_a_clear_error(net, bad):
    with pytest.raises(PauseError, match="pause must be"):
        validate_pause(bad)
    with pytest.raises(FastMedSAMError):
        paused_encoder(net, "litemedsam", bad)


def test_knob_accepts_the_closed_unit_interval():
    assert [validate_pause(v) for v in (0, 0.0, 0.5, 1, 1.0, np.float32(0.25))] == [0.0, 0.0, 0.5, 1.0, 1.0, 0.25]


def test_models_without_heads_refuse_pausing(net):
    with pytest.raises(PauseError, match="no pause heads"):
        paused_encoder(net, "medficientsam-l0", 0.5)


# -- 3D ViT ------------------------------------------------------------------------------------------------------
def test_paused_vit3d_matches_the_plain_encoder_and_freezes_paused_tokens():
    torch.manual_seed(0)
    encoder = build_model("fastsam3d").image_encoder.eval()
    volume = torch.randn(1, 1, 128, 128, 128)
    runner = PausedViT3D(encoder)
    with torch.inference_mode():
        plain = encoder(volume)
        same, stats = runner(volume)
        torch.testing.assert_close(same, plain, atol=1e-4, rtol=1e-4)
        half = torch.arange(512) % 2 == 0
        features = {}
        _, stats = runner(volume, decide=lambda d, f, idx: half[idx] if d == 2 else torch.zeros(len(idx), dtype=torch.bool),
                          features=features)
    assert stats.tokens == [512, 512, 256, 256, 256, 256]
    assert torch.equal(features[2][half], features[5][half])
    assert not torch.equal(features[2][~half], features[5][~half])


def test_paused_attention_matches_a_windowed_sam_med3d_block():
    """SAM-Med3D's window blocks pad the 8^3 grid to 14^3; the paused attention keeps that exactly."""
    torch.manual_seed(0)
    block = PreNormBlock3D(dim=48, num_heads=4, mlp_dim=96, grid=8, window_size=14).eval()
    for p in block.attn.parameters():
        p.data.normal_(0, 0.05)
    x = torch.randn(1, 8, 8, 8, 48)
    with torch.inference_mode():
        expected = block(x).reshape(512, 48)
        active = torch.arange(0, 512, 3)
        got = paused_block(block, x.reshape(512, 48), active, grid=8)
    torch.testing.assert_close(got, expected[active], atol=1e-5, rtol=1e-5)


def test_vit3d_speed_curve_pauses_the_knob_fraction_at_each_decision_depth(manifest_path, capsys):
    """Speed-only 3D curve (recipe weights): tokens entering each block follow the knob exactly and the plain
    encoder is the pause-0 row (the times themselves are the benchmark's business)."""
    from FastMedSAMLib.cli import main

    assert main(["pause-curve-3d", "--model", "fastsam3d", "--pause", "0.5,1", "--repeats", "1",
                 "--manifest", str(manifest_path)]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| 0") or line.startswith("| 1")]
    by_knob = {r[0].strip("| "): r for r in rows}
    assert by_knob["0"][3].strip(" |") == "512 512 512 512 512 512"
    assert by_knob["0.5"][3].strip(" |") == "512 512 256 256 128 128"
    assert by_knob["1"][3].strip(" |") == "512 512 0 0 0 0"
