"""Checkpoint loading: every layout in circulation round-trips through a file; mismatches and bad files are named."""
from __future__ import annotations

import argparse
import functools
from collections import OrderedDict
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from FastMedSAMLib.errors import CheckpointError
from FastMedSAMLib.models import build_model
from FastMedSAMLib.models.base import SamModel
from FastMedSAMLib.models.checkpoint import load_checkpoint
from FastMedSAMLib.models.fastsam3d import build_fastsam3d, build_sam_med3d_turbo
from FastMedSAMLib.models.sam3d import MaskDecoder3D, PromptEncoder3D
from FastMedSAMLib.models.vit3d import ViT3DEncoder

ENCODER = "image_encoder."
CALLS = []  # filled by `_side_effect` if unpickling ever ran code from a file


def _side_effect(*args):
    CALLS.append(args)
    return args


class _Payload:
    """Pickles as a call to `_side_effect`: loading a checkpoint must never make that call."""

    def __reduce__(self):
        return (_side_effect, ("executed",))


def _small_3d_sam(style: str, seed: int) -> SamModel:
    """A narrow FastSAM3D-style ("fastsam") or SAM-Med3D-style ("prenorm") model with the official key layout,
    filled with seeded random weights. Small, so that files are quick to write."""
    if style == "fastsam":
        encoder = ViT3DEncoder(depth=3, num_heads=2, style=style, mlp_only_blocks=1, embed_dim=32, out_chans=48)
    else:
        encoder = ViT3DEncoder(
            depth=2, num_heads=2, style=style, window_size=14, global_blocks=(1,), embed_dim=32, out_chans=48
        )
    model = SamModel(encoder, PromptEncoder3D(embed_dim=48), MaskDecoder3D(transformer_dim=48))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def student() -> SamModel:
    return _small_3d_sam("fastsam", 1)


@pytest.fixture(scope="module")
def teacher() -> SamModel:
    """SAM-Med3D-style weights: only its prompt encoder and mask decoder are used with the student."""
    return _small_3d_sam("prenorm", 2)


@pytest.fixture()
def target() -> SamModel:
    return _small_3d_sam("fastsam", 3)


def _assert_weights(model: SamModel, expected: Dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _training_state() -> dict:
    """What SAM-Med3D / FastSAM3D training scripts save beside the weights."""
    return {
        "epoch": 12,
        "args": argparse.Namespace(lr=8e-5, task_name="turbo"),
        "best_dice": np.float64(0.81),
        "losses": np.array([0.5, 0.4]),
        "scheduler": functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3),
        "payload": _Payload(),
    }


def test_model_state_dict_with_training_state(student, target, tmp_path: Path) -> None:
    path = _save({"model_state_dict": student.state_dict(), **_training_state()}, tmp_path / "fastsam3d.pth")
    assert load_checkpoint(target, path) == ([], [])
    _assert_weights(target, student.state_dict())
    assert CALLS == []


def test_plain_state_dict(student, target, tmp_path: Path) -> None:
    load_checkpoint(target, _save(student.state_dict(), tmp_path / "plain.pth"))
    _assert_weights(target, student.state_dict())


def test_lightning_model_prefix(student, target, tmp_path: Path) -> None:
    state = OrderedDict((f"model.{k}", v) for k, v in student.state_dict().items())
    state["criterion.pos_weight"] = torch.ones(1)  # other Lightning-module state is dropped
    ckpt = {"state_dict": state, "epoch": 4, "global_step": 900, "pytorch-lightning_version": "2.2.1"}
    load_checkpoint(target, _save(ckpt, tmp_path / "best.ckpt"))
    _assert_weights(target, student.state_dict())


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_other_wrappers(student, target, tmp_path: Path, wrapper: str) -> None:
    load_checkpoint(target, _save({wrapper: student.state_dict()}, tmp_path / "wrapped.pt"))
    _assert_weights(target, student.state_dict())


def test_data_parallel_prefix(student, target, tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in student.state_dict().items()}
    load_checkpoint(target, _save({"model_state_dict": state}, tmp_path / "dp.pth"))
    _assert_weights(target, student.state_dict())


@pytest.mark.parametrize("wrapped", [False, True])
def test_encoder_only_with_decoder_from(student, teacher, target, tmp_path: Path, wrapped: bool) -> None:
    encoder = {k[len(ENCODER) :]: v for k, v in student.state_dict().items() if k.startswith(ENCODER)}
    encoder_path = _save({"model_state_dict": encoder} if wrapped else encoder, tmp_path / "student_encoder.pth")
    turbo = {"model_state_dict": teacher.state_dict(), **_training_state()}
    turbo_path = _save(turbo, tmp_path / "sam_med3d_turbo.pth")
    load_checkpoint(target, encoder_path, decoder_from=turbo_path)
    teacher_state = teacher.state_dict()
    expected = {k: v if k.startswith(ENCODER) else teacher_state[k] for k, v in student.state_dict().items()}
    _assert_weights(target, expected)
    assert CALLS == []


def test_encoder_only_without_decoder_names_the_fix(student, target) -> None:
    encoder = {k[len(ENCODER) :]: v for k, v in student.state_dict().items() if k.startswith(ENCODER)}
    with pytest.raises(CheckpointError, match="missing keys: prompt_encoder.pe_layer.*decoder_from"):
        load_checkpoint(target, encoder)


def _unchanged(model: SamModel) -> Dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_missing_key_is_named(student, target, tmp_path: Path) -> None:
    state = student.state_dict()
    del state["mask_decoder.iou_token.weight"]
    before = _unchanged(target)
    with pytest.raises(CheckpointError, match=r"1 missing keys: mask_decoder\.iou_token\.weight"):
        load_checkpoint(target, _save({"model_state_dict": state}, tmp_path / "missing.pth"))
    _assert_weights(target, before)  # nothing was loaded
    result = load_checkpoint(target, state, strict=False)
    assert result.missing == ["mask_decoder.iou_token.weight"] and result.unexpected == []
    assert torch.equal(target.state_dict()["mask_decoder.iou_token.weight"], before["mask_decoder.iou_token.weight"])
    assert torch.equal(target.state_dict()["image_encoder.pos_embed"], state["image_encoder.pos_embed"])


def test_unexpected_key_is_named(student, target, tmp_path: Path) -> None:
    state = student.state_dict()
    state["image_encoder.blocks.0.attn.qkv.weight"] = torch.zeros(96, 32)
    before = _unchanged(target)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: image_encoder\.blocks\.0\.attn\.qkv\.weight"):
        load_checkpoint(target, _save(state, tmp_path / "unexpected.pth"))
    _assert_weights(target, before)
    assert load_checkpoint(target, state, strict=False).unexpected == ["image_encoder.blocks.0.attn.qkv.weight"]


def test_wrong_shape_is_named_even_when_not_strict(student, target, tmp_path: Path) -> None:
    state = student.state_dict()
    state["image_encoder.blocks.2.attn.rel_pos_d"] = torch.zeros(27, 64)
    path = _save({"model_state_dict": state}, tmp_path / "shape.pth")
    before = _unchanged(target)
    expected = r"1 wrong shapes: image_encoder\.blocks\.2\.attn\.rel_pos_d \(27, 64\) \(model \(15, 16\)\)"
    for strict in (True, False):
        with pytest.raises(CheckpointError, match=expected):
            load_checkpoint(target, path, strict=strict)
    _assert_weights(target, before)


def test_other_architecture_lists_first_keys_and_counts() -> None:
    """SAM-Med3D-turbo weights offered to FastSAM3D (the real architectures): counts and the first keys of each kind."""
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(build_fastsam3d(), build_sam_med3d_turbo().state_dict())
    message = str(error.value)
    assert "108 unexpected keys: image_encoder.blocks.0.norm1.weight, image_encoder.blocks.0.norm1.bias," in message
    assert "12 wrong shapes: image_encoder.blocks.2.attn.rel_pos_d (15, 64) (model (15, 128))," in message
    assert message.count(", ...") == 2 and "missing" not in message


def test_truncated_file(student, target, tmp_path: Path) -> None:
    path = _save({"model_state_dict": student.state_dict()}, tmp_path / "full.pth")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_checkpoint(target, truncated)


def test_garbage_and_absent_files(target, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_checkpoint(target, garbage)
    text = tmp_path / "weights.pth"
    text.write_text("<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match="weights.pth"):
        load_checkpoint(target, text)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(target, tmp_path / "absent.pth")


def test_file_without_state_dict(target, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="holds no state_dict.*epoch"):
        load_checkpoint(target, _save({"epoch": 3, "optimizer": {"lr": 1e-4}}, tmp_path / "no_weights.pth"))


def test_real_litemedsam_plain_state_dict(litemedsam_checkpoint: Path) -> None:
    model = build_model("litemedsam")
    assert load_checkpoint(model, litemedsam_checkpoint) == ([], [])
    _assert_weights(model, torch.load(litemedsam_checkpoint, map_location="cpu", weights_only=True))
