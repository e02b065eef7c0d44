"""`train-refine`'s episode losses: the error region a click points at, training on every round, and that a short
run on a real training slice is reproducible and moves the decoder (the shipped weights come from these code paths)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from FastMedSAMLib.models import load_model, slice_adapter
from FastMedSAMLib.refine.data import _record, training_slices
from FastMedSAMLib.refine.train import TrainConfig, _pointed_errors, train


def test_pointed_error_is_the_clicked_error_component():
    truth = np.zeros((2, 32, 32), dtype=bool)
    truth[:, 4:20, 4:20] = True
    predicted = truth.copy()
    predicted[:, 4:8, 4:20] = False  # a missed band at the top
    predicted[:, 26:30, 26:30] = True  # a false blob elsewhere
    pointed = _pointed_errors(predicted, truth, [(10, 5, 1), None]).numpy()
    assert pointed[0].sum() == 4 * 16 and pointed[0][4:8, 4:20].all()  # the band only, not the blob
    assert not pointed[1].any()  # no new click: nothing pointed at
    blob = _pointed_errors(predicted, truth, [(27, 27, 0), None]).numpy()
    assert blob[0].sum() == 16 and blob[0][26:30, 26:30].all()


@pytest.fixture(scope="module")
def record(manifest_path):
    """The first training slice of the split (a real 2D image) with its objects, encoded by LiteMedSAM."""
    source, rgb, objects = next(training_slices(manifest_path, seed=0))
    net = load_model("litemedsam")
    return _record(source, rgb, objects, net, slice_adapter("litemedsam"), seed=0)


def _decoder_state(config: TrainConfig, record, base_net=None) -> dict:
    net = load_model("litemedsam")
    report = train(net, [record], config, progress=False, base_net=base_net)
    assert all(np.isfinite(h["loss"]) for h in report["history"])
    return {k: v.clone() for k, v in net.mask_decoder.state_dict().items()}


def test_every_round_error_target_training_is_reproducible_and_learns(record):
    config = TrainConfig(steps=3, batch=2, lr=1e-3, every_round=True, click_loss=1.0, click_target="error",
                         keep_loss=0.5, p_first_only=0.0)
    first, second = _decoder_state(config, record), _decoder_state(config, record)
    assert all(torch.equal(first[k], second[k]) for k in first)  # same seed, cache and settings: same weights
    original = load_model("litemedsam").mask_decoder.state_dict()
    assert any(not torch.equal(first[k], original[k]) for k in first)  # the steps changed the decoder
    other = _decoder_state(TrainConfig(steps=3, batch=2, lr=1e-3, click_loss=1.0, click_target="error",
                                       keep_loss=0.5, p_first_only=0.0), record)
    assert any(not torch.equal(first[k], other[k]) for k in first)  # losses on every round train differently


def test_rule_in_loop_feeds_back_what_inference_feeds_back(record, monkeypatch):
    """With `rule_in_loop` every click round's mask goes through the click rule before it is fed back (and so the
    run differs from one without it); without it the rule never runs in training."""
    from FastMedSAMLib.refine import train as train_module

    calls = []
    real = train_module.local_edit
    monkeypatch.setattr(train_module, "local_edit", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = TrainConfig(steps=3, batch=2, lr=1e-3, p_first_only=0.0, p_mask_only=0.0, rule_in_loop=True, seed=1)
    with_rule = _decoder_state(config, record)
    assert calls  # click rounds were edited by the rule before being fed back
    calls.clear()
    without = _decoder_state(TrainConfig(steps=3, batch=2, lr=1e-3, p_first_only=0.0, p_mask_only=0.0, seed=1), record)
    assert not calls and any(not torch.equal(with_rule[k], without[k]) for k in with_rule)


def test_pair_training_averages_the_no_click_decodes_with_the_frozen_litemedsam_decoder(record, monkeypatch):
    """With `pair`, every decode without clicks is LiteMedSAM's box logits averaged in (as inference decodes it),
    the frozen decoder stays as it was, and the run is reproducible and differs from one without it."""
    from FastMedSAMLib.refine import train as train_module

    base_net = load_model("litemedsam")
    before = {k: v.clone() for k, v in base_net.mask_decoder.state_dict().items()}
    calls = []
    real = train_module.run_decoder
    monkeypatch.setattr(train_module, "run_decoder", lambda *a, **k: calls.append(a[1] is base_net.mask_decoder) or real(*a, **k))
    config = TrainConfig(steps=3, batch=2, lr=1e-3, p_point=0.0, p_first_only=1.0, pair=True, seed=2)
    paired = _decoder_state(config, record, base_net)
    assert calls.count(True) == 3 and calls.count(False) == 3  # every (box-first, click-free) decode had its pair
    assert all(torch.equal(before[k], v) for k, v in base_net.mask_decoder.state_dict().items())
    assert all(torch.equal(paired[k], v) for k, v in _decoder_state(config, record, base_net).items())
    alone = _decoder_state(TrainConfig(steps=3, batch=2, lr=1e-3, p_point=0.0, p_first_only=1.0, seed=2), record)
    assert any(not torch.equal(paired[k], alone[k]) for k in paired)
    with pytest.raises(ValueError, match="base_net"):
        train(load_model("litemedsam"), [record], config, progress=False)
