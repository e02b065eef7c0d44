"""The server and RemoteSession on loopback, with real data and the real LiteMedSAM weights: bit-identical masks,
nothing re-sent, torch-free client, and each fault ending in a clear error or a transparent recovery."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from live_server import REPO, ProcessServer, ThreadServer, as_the_server_computes, free_port
from torch_blocker import BLOCK_TORCH

from FastMedSAMLib import Box, Box3D
from FastMedSAMLib.client import protocol as p
from FastMedSAMLib.client.serialization import pack_image, pack_mask, unpack_mask
from FastMedSAMLib.client.transport import Transport
from FastMedSAMLib.errors import (
    AuthError,
    BackendBusyError,
    BackendUnreachableError,
    JobCancelledError,
    LimitError,
    TooManySessionsError,
    UploadError,
)
from FastMedSAMLib.io.images import read_image, read_label

LESION = "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115.npz"
ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210ab"


@pytest.fixture(scope="module")
def lesion(data_dir):
    path = data_dir / LESION
    return read_image(path), read_label(f"{path}::gts").array > 0


@pytest.fixture(scope="module")
def local(litemedsam_checkpoint):
    from FastMedSAMLib import Session

    return Session(model="litemedsam", device="cpu")


def local_mask(session, image, box) -> np.ndarray:
    """The mask a local Session gives when it computes as the server process does (its thread count)."""
    session.set_image(image)
    session.clear_cache()
    with as_the_server_computes():
        return session.predict(box=box).mask


def boxes(gt: np.ndarray):
    """A tight box, a loose one and one off the object on the lesion's largest slice."""
    z = int(np.argmax(gt.sum(axis=(1, 2))))
    ys, xs = np.nonzero(gt[z])
    tight = Box(xs.min(), ys.min(), xs.max(), ys.max(), z=z)
    loose = Box(xs.min() - 12, ys.min() - 9, xs.max() + 15, ys.max() + 11, z=z)
    return [tight, loose, Box(20, 30, 90, 100, z=z)]


def remote(server, **kwargs):
    from FastMedSAMLib import RemoteSession

    return RemoteSession(server.url, **kwargs)


# -- wire format -----------------------------------------------------------------------------------------------
def test_mask_frame_round_trip_sends_only_the_bounding_box() -> None:
    mask = np.zeros((40, 512, 512), bool)
    mask[10:13, 100:140, 200:230] = np.random.default_rng(0).random((3, 40, 30)) > 0.5
    frame = pack_mask(mask, {"x": 1})
    back, header = unpack_mask(frame)
    np.testing.assert_array_equal(back, mask)
    assert header["bbox"] == [[10, 13], [100, 140], [200, 230]] and header["x"] == 1
    assert len(frame) < 3 * 40 * 30 / 8 + 400  # bits of the box only, never the volume
    empty, _ = unpack_mask(pack_mask(np.zeros((5, 6), bool), {}))
    assert empty.shape == (5, 6) and not empty.any()


def test_client_imports_and_predicts_without_torch(live_server, lesion, local, tmp_path) -> None:
    image, gt = lesion
    box = boxes(gt)[0]
    code = BLOCK_TORCH + f"""
import numpy as np
from FastMedSAMLib import RemoteSession, Box
s = RemoteSession({live_server.url!r}, model="litemedsam")
volume = np.load(sys.argv[1])
s.set_image(volume, spacing={list(image.spacing)!r}, origin={list(image.origin)!r}, direction=np.array({image.direction.tolist()!r}))
m = s.predict(box=Box({box.x0}, {box.y0}, {box.x1}, {box.y1}, z={box.z})).mask
assert 'torch' not in sys.modules
np.save(sys.argv[2], m)
"""
    tmp = tmp_path
    np.save(tmp / "volume.npy", image.array)
    done = subprocess.run([sys.executable, "-c", code, str(tmp / "volume.npy"), str(tmp / "mask.npy")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    local.set_image(image)
    np.testing.assert_array_equal(np.load(tmp / "mask.npy"), local.predict(box=box).mask)


# -- same masks, nothing re-sent -------------------------------------------------------------------------------
def test_local_and_remote_masks_are_bit_identical(live_server, lesion, local) -> None:
    image, gt = lesion
    session = remote(live_server)
    session.set_image(image)
    local.set_image(image)
    for box in boxes(gt):
        got, want = session.predict(box=box), local.predict(box=box)
        np.testing.assert_array_equal(got.mask, want.mask)
        assert got.iou == pytest.approx(want.iou, abs=0) and got.prompt == want.prompt
        assert set(got.transport) == {"queue", "server", "transfer", "round_trip"}
    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    ys, xs = np.nonzero(gt.any(axis=0))
    box3d = Box3D(xs.min(), ys.min(), zs.min() + 2, xs.max(), ys.max(), zs.max() - 2)
    seen = []
    got = session.predict(box=box3d, progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_array_equal(got.mask, local.predict(box=box3d).mask)
    assert seen and seen[-1][1] == box3d.z1 - box3d.z0 + 1 and [d for d, _ in seen] == sorted(d for d, _ in seen)
    session.set_pause(0.25)
    local.set_pause(0.25)
    try:
        box = boxes(gt)[1]
        np.testing.assert_array_equal(session.predict(box=box).mask, local.predict(box=box).mask)
    finally:
        local.set_pause(0.0)


def test_an_image_is_sent_once(live_server, lesion) -> None:
    image, _ = lesion
    first = remote(live_server)
    first.set_image(image.array[:6] + 1, spacing=image.spacing)  # an image this server has not seen
    assert first.uploaded_bytes > 0
    again = remote(live_server)
    again.set_image(image.array[:6] + 1, spacing=image.spacing)
    assert again.uploaded_bytes == 0
    other = remote(live_server)
    other.set_image(image.array[:6] + 1, spacing=(9.0, 9.0, 9.0))  # same voxels, other geometry: another digest
    assert other.uploaded_bytes > 0


# -- faults ----------------------------------------------------------------------------------------------------
def test_corrupt_truncated_and_misaddressed_uploads_are_refused(live_server, lesion) -> None:
    image, _ = lesion
    transport = Transport(live_server.url)
    digest, frame = pack_image(image.array[:3] + 7, {"spacing": image.spacing})
    path = p.PATH_IMAGE.format(digest=digest)
    corrupt = bytearray(frame)
    corrupt[-50] ^= 0xFF
    other_digest, _ = pack_image(image.array[:3] + 8, {"spacing": image.spacing})
    for body, where in ((bytes(corrupt), path), (frame[: len(frame) // 2], path), (b"garbage", path),
                        (frame, p.PATH_IMAGE.format(digest=other_digest))):
        with pytest.raises(UploadError):
            transport.request("PUT", where, body=body, content_type=p.FRAME_MEDIA_TYPE, expected=(201,))
    for d in (digest, other_digest):
        assert transport.request("HEAD", p.PATH_IMAGE.format(digest=d), expected=(200, 404)).status == 404
    transport.request("PUT", path, body=frame, content_type=p.FRAME_MEDIA_TYPE, expected=(201,))
    assert transport.request("HEAD", path, expected=(200, 404)).status == 200


def test_tokens_and_per_token_digests(lesion, litemedsam_checkpoint) -> None:
    image, gt = lesion
    server = ThreadServer(device="cpu", token=f"alice={ALICE},bob={BOB}")
    try:
        with pytest.raises(AuthError):
            remote(server)
        with pytest.raises(AuthError):
            remote(server, token="alice-token-0123456780")
        alice = remote(server, token=ALICE)
        alice.set_image(image)
        assert alice.uploaded_bytes > 0
        assert alice.predict(box=boxes(gt)[0]).mask.any()
        bob = Transport(server.url, BOB)  # bob cannot learn that alice's scan is there
        assert bob.request("HEAD", p.PATH_IMAGE.format(digest=alice.digest), expected=(200, 404)).status == 404
        bob_session = remote(server, token=BOB)
        bob_session.set_image(image)
        assert bob_session.uploaded_bytes > 0
        assert Transport(server.url).request("GET", p.PATH_HEALTH).json()["auth"] is True  # health needs no token
    finally:
        server.stop()


def test_limits_give_clear_errors(lesion, litemedsam_checkpoint) -> None:
    image, _ = lesion
    server = ThreadServer(device="cpu", max_body_mb=0.05, max_voxels=300_000, max_sessions_per_token=2, max_queue=0)
    try:
        with pytest.raises(LimitError, match="MAX_BODY_MB"):
            remote(server).set_image(image)  # ~1 MB compressed
        with pytest.raises(LimitError, match="voxels"):
            remote(server).set_image(np.zeros((2, 400, 400), np.int16))  # compresses to nothing, too many voxels
        sessions = [remote(server) for _ in range(3)]
        sessions[0].set_image(np.zeros((64, 64), np.uint8))
        sessions[1].set_image(np.zeros((64, 64), np.uint8))
        with pytest.raises(TooManySessionsError) as too_many:
            sessions[2].set_image(np.zeros((64, 64), np.uint8))
        assert too_many.value.retry_after >= 1
        with pytest.raises(BackendBusyError) as busy:  # max_queue=0: every prediction is turned away
            sessions[0].predict(box=Box(10, 10, 40, 40))
        assert not isinstance(busy.value, TooManySessionsError) and busy.value.retry_after >= 1
    finally:
        server.stop()
    with pytest.raises(BackendUnreachableError):
        remote(server)


def test_expired_sessions_and_evicted_images_are_rebuilt(lesion, local) -> None:
    image, gt = lesion
    server = ThreadServer(device="cpu", session_idle_s=0.3, blob_store_mb=0.001)
    try:
        session = remote(server)
        session.set_image(image)
        local.set_image(image)
        box = boxes(gt)[0]
        first = session.predict(box=box).mask
        time.sleep(0.6)  # the session expires
        np.testing.assert_array_equal(session.predict(box=box).mask, first)
        sent = session.uploaded_bytes
        other = remote(server)
        other.set_image(image.array[:4] + 3)  # pushes the lesion out of the tiny blob store
        np.testing.assert_array_equal(session.predict(box=box).mask, first)
        assert session.uploaded_bytes > sent  # re-sent because the server had dropped it
        np.testing.assert_array_equal(first, local.predict(box=box).mask)
    finally:
        server.stop()


def test_two_prompts_racing_on_one_session_get_their_own_masks(live_server, lesion, local) -> None:
    image, gt = lesion
    session = remote(live_server)
    session.set_image(image)
    local.set_image(image)
    first, second = boxes(gt)[:2]
    results = {}

    def run(name, box):
        results[name] = session.predict(box=box).mask

    threads = [threading.Thread(target=run, args=(n, b)) for n, b in (("a", first), ("b", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    np.testing.assert_array_equal(results["a"], local.predict(box=first).mask)
    np.testing.assert_array_equal(results["b"], local.predict(box=second).mask)


def test_a_3d_job_can_be_cancelled_and_health_answers_meanwhile(live_server, lesion) -> None:
    image, gt = lesion
    session = remote(live_server)
    session.set_image(image)
    session.clear_cache()  # every slice must be encoded: the job runs long enough to watch
    health = []

    def progress(done, total):
        health.append(Transport(live_server.url).request("GET", p.PATH_HEALTH).json()["jobs_running"])
        if done >= 2:
            raise JobCancelledError("stopped by the test")

    with pytest.raises(JobCancelledError):
        session.predict(box=Box3D(100, 100, 0, 300, 300, image.array.shape[0] - 1), progress=progress)
    assert health and health[0] >= 1  # /healthz answered while the job computed
    deadline = time.monotonic() + 60
    while live_server.state.jobs.running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_server.state.jobs.running() == 0  # the server stopped the work


def test_server_killed_and_restarted_mid_session(lesion, local, tmp_path) -> None:
    image, gt = lesion
    port = free_port()
    server = ProcessServer(port)
    try:
        session = remote(server)
        session.set_image(image)
        box = boxes(gt)[0]
        before = session.predict(box=box).mask
        server.kill()
        with pytest.raises(BackendUnreachableError):
            session.predict(box=box)
        server = ProcessServer(port)  # a fresh process: no images, no sessions
        after = session.predict(box=box)
        np.testing.assert_array_equal(after.mask, before)
        np.testing.assert_array_equal(after.mask, local_mask(local, image, box))
    finally:
        server.kill()


def test_bench_remote_reports_every_figure(live_server, data_dir) -> None:
    """`fastmedsam bench --remote` end to end, small: the same masks local and remote (checked inside), the big CT
    sent once, no load errors, and sessions held on new images with the server's peak memory reported."""
    from FastMedSAMLib.evaluation.bench_remote import bench_remote, markdown

    report = bench_remote(live_server.url, None, data_dir, clicks=3, clients=2, sessions=3)
    assert report["upload"]["first"]["bytes_sent"] > 0 and report["upload"]["second"]["bytes_sent"] == 0
    assert report["load"]["errors"] == 0 and report["load"]["requests"] == 2 * 3
    held = report["sessions"]
    assert held["opened"] == 3 and held["refused"] == 0 and held["cache"]["entries"] >= 3
    assert all(mb > 0 for _, mb in held["peak_rss_mb"])
    assert "3 sessions on new images" in markdown(report)


def test_closing_a_session_stops_its_prefetch(live_server, lesion) -> None:
    image, gt = lesion
    client = remote(live_server)
    client.set_image(image)
    model = live_server.state.pool.slot("litemedsam").session
    model.clear_cache()
    assert client.prefetch() == gt.shape[0]  # every slice, the middle one first
    client.close()  # nobody will prompt on them: the server stops encoding
    job = model._prefetch
    assert job.wait(60) and job.stopped_by == "cancel" and len(job.encoded) < gt.shape[0], job
