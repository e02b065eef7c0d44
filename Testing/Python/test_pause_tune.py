"""Tuning with pausing (FastMedSAMLib/pause/tune.py): adapters act on the paused path only, the frozen encoder
and the plain model stay untouched, and heads files with adapters round-trip through sha256-checked loading."""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from FastMedSAMLib.errors import WeightsError
from FastMedSAMLib.models import load_model
from FastMedSAMLib.pause import load_pause_heads
from FastMedSAMLib.pause.calibrate import split_slices, to_tensors
from FastMedSAMLib.pause.heads import load_heads
from FastMedSAMLib.pause.tinyvit_paused import PausedTinyViT
from FastMedSAMLib.pause.tune import TuneConfig, tune

IMAGES = ["xray_lung/cxr/MCUCXR_0001_0.png", "us_hc18/001_HC.png", "endo_kvasir/images/cju0qkwl35piu0993l0dewei2.jpg"]


@pytest.fixture(scope="module")
def net(litemedsam_checkpoint):
    return load_model("litemedsam", weights=litemedsam_checkpoint)


@pytest.fixture(scope="module")
def slices(manifest_path: Path):
    return split_slices(manifest_path, IMAGES)  # calibration images: only a smoke run here, nothing is shipped


@pytest.fixture(scope="module")
def tuned(net, slices, tmp_path_factory):
    heads = load_pause_heads("litemedsam")
    before = {k: v.clone() for k, v in net.image_encoder.state_dict().items()}
    cache = tmp_path_factory.mktemp("targets")
    result, report = tune(net.image_encoder, heads, [rgb for _, _, rgb in slices],
                          TuneConfig(train_slices=2, valid_slices=1, steps=3, rank=4), cache, progress=False)
    return heads, result, report, before, cache


def _run(net, heads, tensor, threshold: float):
    runner = PausedTinyViT(net.image_encoder, heads.catchup, adapters=heads.adapters).eval()

    def decide(depth, features, indices):
        head = heads.head_at(depth)
        return torch.zeros(len(features), dtype=torch.bool) if head is None else head(features) < threshold

    with torch.inference_mode():
        return runner(tensor, decide=decide)


def test_tuning_trains_only_the_paused_path(net, tuned, slices) -> None:
    heads, result, report, before, cache = tuned
    after = net.image_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the frozen encoder is untouched
    assert result.adapter_rank == 4 and heads.adapters is None  # a tuned copy; the committed heads unchanged
    assert any(not torch.equal(a.weight, b.weight) for a, b in
               zip(heads.catchup.modules(), result.catchup.modules()) if isinstance(a, torch.nn.Linear))
    assert any(float(a.up.weight.abs().sum()) > 0 for a in result.adapters)
    for a, b in zip(heads.heads.parameters(), result.heads.parameters()):
        assert torch.equal(a, b)  # the heads only decide, they are not trained here
    assert len(list(cache.glob("*.pt"))) == 3  # the plain embeddings are cached on disk
    assert set(report["valid_loss_before"]) == set(report["valid_loss_after"]) == {"0.25", "0.5", "0.75"}
    # nothing paused: adapters and catch-ups never run, the tuned path equals the untuned one bit for bit
    tensor = to_tensors(slices[:1])[0]
    plain, _ = _run(net, heads, tensor, -1e9)
    tuned_out, stats = _run(net, result, tensor, -1e9)
    assert torch.equal(plain, tuned_out) and stats.paused_fraction() == [0.0] * 10
    # something paused: the adapters change the output
    half = heads.threshold(0.5)
    assert not torch.equal(_run(net, heads, tensor, half)[0], _run(net, result, tensor, half)[0])


def test_zero_adapters_change_nothing(net, slices) -> None:
    heads = load_pause_heads("litemedsam")
    with_adapters = copy.deepcopy(heads)
    with_adapters.add_adapters(8)  # up-projections start at zero
    tensor = to_tensors(slices[1:2])[0]
    threshold = heads.threshold(0.5)
    a, _ = _run(net, heads, tensor, threshold)
    b, _ = _run(net, with_adapters, tensor, threshold)
    assert torch.equal(a, b)


def test_heads_with_adapters_round_trip_and_tampering_is_refused(tuned, tmp_path: Path) -> None:
    _, result, _, _, _ = tuned
    path = tmp_path / "tuned.pt"
    sha256 = result.save(path, {"note": "test"})
    loaded = load_heads(path, sha256, "litemedsam")
    assert loaded.adapter_rank == 4
    for (name, a), (_, b) in zip(result.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name  # float16-rounded weights survive float16 storage exactly
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="fail verification"):
        load_heads(path, sha256, "litemedsam")


def test_the_mask_term_pulls_the_paused_masks_and_reports_their_agreement(net, slices, tmp_path: Path) -> None:
    heads = load_pause_heads("litemedsam")
    rgbs = [rgb for _, _, rgb in slices]
    decoder = (net.prompt_encoder, net.mask_decoder)
    frozen = {k: v.clone() for k, v in net.mask_decoder.state_dict().items()}
    config = TuneConfig(train_slices=2, valid_slices=1, steps=2, rank=4, mask_loss=1.0, boxes=2)
    with_masks, report = tune(net.image_encoder, heads, rgbs, config, tmp_path, progress=False, decoder=decoder)
    without, _ = tune(net.image_encoder, heads, rgbs, replace(config, mask_loss=0.0), tmp_path, progress=False,
                      decoder=decoder)
    # same seed, same slices and knobs: only the mask term differs, and it moves the adapters
    assert any(not torch.equal(a.up.weight, b.up.weight) for a, b in zip(with_masks.adapters, without.adapters))
    for key in ("valid_mask_dice_before", "valid_mask_dice_after"):
        assert set(report[key]) == {"0.25", "0.5", "0.75"} and all(0 <= v <= 1 for v in report[key].values())
    assert all(torch.equal(v, net.mask_decoder.state_dict()[k]) for k, v in frozen.items())  # the decoder is frozen
