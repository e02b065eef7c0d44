"""The token-pause knob through the Session and the CLI, on a real DeepLesion CT with the real weights."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from FastMedSAMLib import Box, Box3D, Session
from FastMedSAMLib.cli import main
from FastMedSAMLib.evaluation.metrics import dice
from FastMedSAMLib.io.images import read_image, read_label
from FastMedSAMLib.pause import PauseError


@pytest.fixture(scope="module")
def lesion(data_dir):
    path = data_dir / "ct_deeplesion_medsam2" / "CT_Lesion_000015_01_01_103-115.npz"
    return path, read_image(path), read_label(f"{path}::gts").array > 0


@pytest.fixture(scope="module")
def session(litemedsam_checkpoint) -> Session:
    return Session(model="litemedsam", device="cpu")


def _middle_box(gt: np.ndarray) -> Box:
    z = int(np.argmax(gt.sum(axis=(1, 2))))
    ys, xs = np.nonzero(gt[z])
    return Box(xs.min(), ys.min(), xs.max(), ys.max(), z=z)


def test_knob_changes_the_encoder_and_back_to_zero_is_the_plain_model(session, lesion, litemedsam_checkpoint):
    _, image, gt = lesion
    box = _middle_box(gt)
    session.set_image(image)
    session.set_pause(0.25)
    paused = session.predict(box=box)
    assert paused.encoder_calls == 1
    assert len(paused.paused_by_block) == 10 and 0.0 < paused.paused_fraction < 1.0
    assert dice(paused.mask, gt[box.z]) > 0.8

    session.set_pause(0)
    plain = session.predict(box=box)
    assert plain.encoder_calls == 1  # another knob value: another embedding
    assert plain.paused_by_block is None and plain.paused_fraction == 0.0
    fresh = Session(model="litemedsam", device="cpu")
    fresh.set_image(image)
    np.testing.assert_array_equal(plain.mask, fresh.predict(box=box).mask)
    assert dice(paused.mask, plain.mask) > 0.95  # a light knob barely moves the mask

    session.set_pause(0.25)
    again = session.predict(box=box)
    assert again.encoder_calls == 0  # each knob value keeps its own cached embeddings
    np.testing.assert_array_equal(again.mask, paused.mask)
    assert again.paused_by_block == paused.paused_by_block
    session.set_pause(0)


def test_propagation_reports_paused_fraction_over_its_slices(session, lesion):
    _, image, gt = lesion
    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    ys, xs = np.nonzero(gt.any(axis=0))
    session.set_image(image)
    session.clear_cache()
    session.set_pause(0.25)
    try:
        prediction = session.predict(box=Box3D(xs.min(), ys.min(), int(zs.min()), xs.max(), ys.max(), int(zs.max())))
    finally:
        session.set_pause(0)
    assert prediction.encoder_calls == len(zs)
    assert len(prediction.paused_by_block) == 10 and prediction.paused_fraction > 0.0
    assert dice(prediction.mask, gt) > 0.7


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "fast"])
def test_bad_knob_is_refused_and_leaves_the_session_as_it_was(session, bad):
    session.set_pause(0.25)
    with pytest.raises(PauseError, match="pause must be"):
        session.set_pause(bad)
    assert session.pause == 0.25
    session.set_pause(0)
    with pytest.raises(PauseError, match="pause must be"):
        Session(model="litemedsam", device="cpu", pause=bad)


def test_models_without_pause_heads_refuse_a_knob(parity_dir, tmp_path):
    from FastMedSAMLib.evaluation.bench import recipe_checkpoint

    for model in ("medficientsam-l0", "fastsam3d"):
        weights = recipe_checkpoint(model, parity_dir, tmp_path)
        with pytest.raises(PauseError, match=model):
            Session(model=model, device="cpu", weights=weights, pause=0.5)
        assert Session(model=model, device="cpu", weights=weights, pause=0).pause == 0.0


def test_cli_segment_with_a_knob(lesion, tmp_path, capsys):
    path, _, gt = lesion
    box = _middle_box(gt)
    out = tmp_path / "mask.nii.gz"
    code = main(["segment", str(path), "--box", str(box.x0), str(box.y0), str(box.x1), str(box.y1), str(box.z),
                 "--pause", "0.25", "--out", str(out), "--device", "cpu"])
    assert code == 0
    assert "knob 0.25" in capsys.readouterr().out
    assert dice(read_label(out).array[box.z] > 0, gt[box.z]) > 0.8
    assert main(["segment", str(path), "--box", "1", "1", "5", "5", "0", "--pause", "2", "--out", str(out)]) == 2
    assert "pause must be in [0, 1]" in capsys.readouterr().err


def test_cli_knob_lists_take_values_up_to_one():
    from FastMedSAMLib.commands.arguments import pause_list

    assert pause_list("0,0.25,0.5,0.75,1") == [0.0, 0.25, 0.5, 0.75, 1.0]
    for bad in ("0,1.5", "0,x", ","):
        with pytest.raises(argparse.ArgumentTypeError, match=r"\[0, 1\]"):
            pause_list(bad)
