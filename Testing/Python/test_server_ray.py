"""`fastmedsam serve --ray --replicas 2` on loopback (1 torch thread per replica, a small object store): the same
masks as the local Session through Ray Serve, and prompts on one image routed by its digest (rebuilt on whichever
replica answers otherwise)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from live_server import REPO, SERVER_THREADS, as_the_server_computes, free_port, wait_healthy

from FastMedSAMLib import Box, Box3D
from FastMedSAMLib.client import protocol as p
from FastMedSAMLib.client.remote_session import encode_prompts
from FastMedSAMLib.client.serialization import pack_frame, unpack_mask
from FastMedSAMLib.io.images import read_image, read_label

pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
LESION = "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115.npz"


@pytest.fixture(scope="module")
def ray_server(litemedsam_checkpoint):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(SERVER_THREADS),
           "RAY_USAGE_STATS_ENABLED": "0"}  # replicas run `serve --ray`'s one thread each
    process = subprocess.Popen([sys.executable, "-m", "FastMedSAMLib.cli", "serve", "--ray", "--replicas", "2",
                                "--port", str(port), "--device", "cpu", "--log-level", "warning"],
                               env=env, cwd=str(REPO),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=300, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        import psutil

        try:  # a server that exited by itself (wait_healthy says why) leaves nothing to stop
            tree = psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]
        except psutil.NoSuchProcess:
            tree = []
        for member in tree:  # the server and the Ray processes it started (gcs, raylet, replicas)
            member.terminate()
        for member in psutil.wait_procs(tree, timeout=20)[1]:
            member.kill()


def test_two_replicas_give_the_local_masks(ray_server, data_dir) -> None:
    from FastMedSAMLib import RemoteSession, Session

    path = data_dir / LESION
    image, gt = read_image(path), read_label(f"{path}::gts").array > 0
    z = int(np.argmax(gt.sum(axis=(1, 2))))
    ys, xs = np.nonzero(gt[z])
    box = Box(xs.min(), ys.min(), xs.max(), ys.max(), z=z)
    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    box3d = Box3D(xs.min(), ys.min(), zs.min(), xs.max(), ys.max(), min(zs.min() + 2, zs.max()))
    local = Session(model="litemedsam", device="cpu")
    local.set_image(image)
    with as_the_server_computes():  # the replicas' thread count
        expected_2d, expected = local.predict(box=box).mask, local.predict(box=box3d).mask
    remote = RemoteSession(ray_server, model="litemedsam")
    remote.set_image(image)
    for _ in range(3):  # several round trips: whichever replica answers, the mask is the local one
        np.testing.assert_array_equal(remote.predict(box=box).mask, expected_2d)
    for _ in range(3):  # a 3D box is a job on one replica, polled through whichever answers (the shared board)
        np.testing.assert_array_equal(remote.predict(box=box3d).mask, expected)

    # Polls sent without the routing header land on either replica at random: every one must find the job.
    header = {"kind": "prompt", "prompts": encode_prompts(box3d, None), "pause": 0.0}
    for _ in range(5):  # the start may itself land on a replica without the session (soft affinity): reopen
        started = remote.transport.request("POST", p.PATH_PREDICT.format(session_id=remote.session_id),
                                           body=pack_frame(header, b""), content_type=p.FRAME_MEDIA_TYPE,
                                           expected=(202, 410))
        if started.status == 202:
            break
        remote.set_image(image)
    assert started.status == 202
    remote.transport.route = None
    answers = [remote.transport.request("GET", p.PATH_JOB.format(job_id=started.json()["job"]), expected=(200,))
               for _ in range(12)]
    while not answers[-1].is_frame:
        answers.append(remote.transport.request("GET", p.PATH_JOB.format(job_id=started.json()["job"]) + "?wait=1"))
    np.testing.assert_array_equal(unpack_mask(answers[-1].body)[0], expected)
