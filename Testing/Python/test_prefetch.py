"""Background prefetch on real volumes with the real LiteMedSAM weights: it never changes a result, a prompt is
served while it runs (it does not wait for the volume), it is cancellable and bounded by the cache."""
from __future__ import annotations

import time

import numpy as np
import pytest

from FastMedSAMLib import Box, Box3D, Session
from FastMedSAMLib.engines.prefetch import outward
from FastMedSAMLib.errors import PromptError
from FastMedSAMLib.io.images import read_image, read_label


@pytest.fixture(scope="module")
def lesion(data_dir, litemedsam_checkpoint):
    path = data_dir / "ct_deeplesion_medsam2" / "CT_Lesion_000015_01_01_103-115.npz"
    gt = read_label(f"{path}::gts").array > 0
    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    ys, xs = np.nonzero(gt.any(axis=0))
    return read_image(path), Box3D(int(xs.min()), int(ys.min()), int(zs.min()), int(xs.max()), int(ys.max()), int(zs.max()))


def test_outward_order_starts_at_the_viewed_slice():
    assert outward(range(8), 3) == [3, 4, 2, 5, 1, 6, 0, 7]
    assert outward([9, 2, 2, 5], 5) == [5, 2, 9]


def test_prefetched_volume_gives_the_same_3d_result_without_encoding(lesion):
    image, box = lesion
    plain = Session("litemedsam", "cpu")
    plain.set_image(image)
    expected = plain.predict(box=box)

    session = Session("litemedsam", "cpu")
    session.set_image(image)
    job = session.prefetch(slices=range(box.z0, box.z1 + 1), center=(box.z0 + box.z1) // 2)
    assert job.wait(300) and job.error is None and job.stopped_by is None
    assert job.encoded[0] == (box.z0 + box.z1) // 2 and sorted(job.encoded) == list(range(box.z0, box.z1 + 1))
    result = session.predict(box=box)
    assert result.encoder_calls == 0  # every slice came from the prefetch
    np.testing.assert_array_equal(result.mask, expected.mask)
    assert result.iou == expected.iou


def test_a_prompt_during_prefetch_is_served_before_the_volume_is_done(lesion):
    image, box = lesion
    session = Session("litemedsam", "cpu")
    session.set_image(image)
    depth = image.array.shape[0]
    job = session.prefetch(center=0)  # far from the prompt's slice: the prompt must encode its own
    z = depth - 1
    prompt = Box(box.x0, box.y0, box.x1, box.y1, z=z)
    time.sleep(0.2)  # let the prefetch take the model
    result = session.predict(box=prompt)
    assert not job.done and len(job.encoded) < depth  # served while the prefetch still had slices to go
    assert result.encoder_calls == 1
    session.cancel_prefetch()
    assert job.done and job.stopped_by == "cancel" and job.error is None

    fresh = Session("litemedsam", "cpu")
    fresh.set_image(image)
    np.testing.assert_array_equal(result.mask, fresh.predict(box=prompt).mask)


def test_prefetch_stops_when_the_cache_is_full_and_set_image_cancels_it(lesion):
    image, _ = lesion
    session = Session("litemedsam", "cpu", cache_mb=9)  # two 4 MiB LiteMedSAM embeddings
    session.set_image(image)
    job = session.prefetch(center=5)
    assert job.wait(120)
    assert job.stopped_by == "cache" and job.encoded == [5, 6]
    assert session.cache_info()["entries"] == 2

    job = session.prefetch(center=0)
    session.set_image(image.array[:4], spacing=(1.0, 1.0, 1.0))  # a new image cancels the running prefetch
    assert job.done and job.stopped_by in ("cancel", "cache", None)


def test_prefetch_refuses_what_it_cannot_do(lesion, data_dir):
    image, _ = lesion
    session = Session("litemedsam", "cpu")
    with pytest.raises(PromptError, match="volume"):
        session.prefetch()
    session.set_image(image)
    with pytest.raises(PromptError, match="slice indices"):
        session.prefetch(slices=[0, 999])


def test_every_prefetch_of_a_session_runs_on_its_one_background_thread(lesion):
    """A thread's first convolution is slow on a GPU (per-thread cuDNN plans), so prefetches reuse one thread."""
    import threading

    image, box = lesion
    session = Session("litemedsam", "cpu")
    session.set_image(image)
    encoder, threads = session._engine.encoder, []

    def recording(tensor):
        threads.append(threading.current_thread())  # the object: a new thread may reuse an ident
        return encoder(tensor)

    session._engine.encoder = recording
    for z in (box.z0, box.z1):
        job = session.prefetch(slices=[z], center=z)
        assert job.wait(120) and job.encoded == [z] and job.error is None
    assert len(threads) == 2 and threads[0] is threads[1] and threads[0] is not threading.main_thread()
