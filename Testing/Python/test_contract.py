"""The Session contract (`FastMedSAMLib.api.SessionLike`), written once and run against every session type.

A session type joins by adding a factory to `SESSION_KINDS`: (model, pytest request) -> a SessionLike. Each test uses
real data and the real LiteMedSAM weights: the same image and prompts give the same mask, bad input raises the
contract's error type and changes nothing."""
from __future__ import annotations

import time
from typing import Callable, Dict

import numpy as np
import pytest

from FastMedSAMLib import Box, Box3D, Point, Prediction, SessionLike
from FastMedSAMLib.api import STAGES
from FastMedSAMLib.errors import ImageError, PauseError, PromptError
from FastMedSAMLib.evaluation.metrics import dice
from FastMedSAMLib.io.images import read_image, read_label


def _local(model: str, request) -> SessionLike:
    from FastMedSAMLib import Session

    return Session(model=model, device="cpu")


def _remote(model: str, request) -> SessionLike:
    """A RemoteSession talking to a live server on loopback (the whole contract over HTTP)."""
    from FastMedSAMLib import RemoteSession

    return RemoteSession(request.getfixturevalue("live_server").url, model=model)


SESSION_KINDS: Dict[str, Callable[[str, object], SessionLike]] = {"local": _local, "remote": _remote}
LESION = "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115.npz"


@pytest.fixture(scope="module", params=sorted(SESSION_KINDS))
def session(request, litemedsam_checkpoint) -> SessionLike:
    return SESSION_KINDS[request.param]("litemedsam", request)


@pytest.fixture(scope="module")
def lesion(data_dir):
    path = data_dir / LESION
    return read_image(path), read_label(f"{path}::gts").array > 0


def _tight(mask: np.ndarray, z=None) -> Box:
    ys, xs = np.nonzero(mask)
    return Box(xs.min(), ys.min(), xs.max(), ys.max(), z=z)


def test_satisfies_the_protocol(session) -> None:
    assert isinstance(session, SessionLike)
    assert session.model_name == "litemedsam" and session.pause == 0.0


def test_2d_box_prediction_fields_and_accuracy(session, lesion) -> None:
    image, gt = lesion
    session.set_image(image)
    z = int(np.argmax(gt.sum(axis=(1, 2))))
    first = session.predict(box=_tight(gt[z], z=z))
    assert isinstance(first, Prediction)
    assert first.mask.shape == gt.shape[1:] and first.mask.dtype == bool
    assert first.slice_index == z
    assert set(first.timings) == set(STAGES) | {"total"}
    assert all(v >= 0 for v in first.timings.values())
    assert dice(first.mask, gt[z]) > 0.8
    again = session.predict(box=_tight(gt[z], z=z))  # stateless: the same inputs give the same mask
    np.testing.assert_array_equal(first.mask, again.mask)
    assert again.encoder_calls == 0 and again.timings["encode"] == 0.0  # the embedding was cached


def test_3d_box_gives_a_volume(session, lesion) -> None:
    image, gt = lesion
    session.set_image(image)
    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    ys, xs = np.nonzero(gt.any(axis=0))
    prediction = session.predict(box=Box3D(xs.min(), ys.min(), zs.min(), xs.max(), ys.max(), zs.max()))
    assert prediction.mask.shape == gt.shape
    assert prediction.z_range == (int(zs.min()), int(zs.max()))
    assert not prediction.mask[: zs.min()].any() and not prediction.mask[zs.max() + 1:].any()
    assert dice(prediction.mask, gt) > 0.75


def test_bad_prompts_raise_prompt_error_and_change_nothing(session, lesion) -> None:
    image, gt = lesion
    session.set_image(image)
    z = int(np.argmax(gt.sum(axis=(1, 2))))
    before = session.predict(box=_tight(gt[z], z=z)).mask
    for bad in (
        dict(box=Box(5000, 5000, 5100, 5100, z=z)),  # outside the image
        dict(box=Box(10, 10, 10, 10, z=z)),  # a single pixel
        dict(box=Box(10, 10, 50, 50)),  # no slice on a volume
        dict(points=[Point(20, 20, z)]),  # a point for a box-only model
        dict(box=_tight(gt[z], z=z), mask=np.zeros(gt.shape[1:], bool)),  # a mask for a model without mask prompts
        dict(),  # no prompt at all
    ):
        with pytest.raises(PromptError):
            session.predict(**bad)
    np.testing.assert_array_equal(session.predict(box=_tight(gt[z], z=z)).mask, before)


def test_bad_image_raises_image_error_and_keeps_the_previous_one(session, lesion) -> None:
    image, gt = lesion
    session.set_image(image)
    z = int(np.argmax(gt.sum(axis=(1, 2))))
    before = session.predict(box=_tight(gt[z], z=z)).mask
    with pytest.raises(ImageError):
        session.set_image(np.full((4, 32, 32), np.nan, dtype=np.float32))
    np.testing.assert_array_equal(session.predict(box=_tight(gt[z], z=z)).mask, before)


def test_pause_knob_contract(session) -> None:
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(PauseError):
            session.set_pause(bad)
    assert session.pause == 0.0
    session.set_pause(0.25)
    assert session.pause == 0.25
    session.set_pause(0.0)
    assert session.pause == 0.0


def test_cache_info_and_clear(session, lesion) -> None:
    image, gt = lesion
    session.set_image(image)
    z = int(np.argmax(gt.sum(axis=(1, 2))))
    session.predict(box=_tight(gt[z], z=z))
    info = session.cache_info()
    assert info["entries"] >= 1 and info["bytes"] > 0
    session.clear_cache()
    assert session.cache_info()["entries"] == 0
    assert session.predict(box=_tight(gt[z], z=z)).encoder_calls == 1


def test_prefetch_encodes_in_the_background_and_keeps_the_masks(session, lesion) -> None:
    image, gt = lesion
    session.set_image(image)
    labelled = [int(z) for z in np.nonzero(gt.any(axis=(1, 2)))[0]]
    near, far = labelled[len(labelled) // 2], labelled[0]
    session.clear_cache()
    cold = session.predict(box=_tight(gt[far], z=far)).mask  # encoded by the prompt itself
    session.clear_cache()
    session.prefetch(slices=[near, far], center=near)
    deadline = time.monotonic() + 120
    while session.cache_info()["entries"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    warm = session.predict(box=_tight(gt[far], z=far))
    assert warm.encoder_calls == 0  # the prefetch encoded it
    np.testing.assert_array_equal(warm.mask, cold)
    with pytest.raises(PromptError):
        session.prefetch(slices=[gt.shape[0]])  # not a slice of this volume
    with pytest.raises(PromptError):
        session.set_image(image.array[near])  # a 2D image: nothing to prefetch
        session.prefetch()
