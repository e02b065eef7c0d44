"""litemedsam-refine: clicks and the previous mask refine a box result on real validation data (2D and 3D), calls
are stateless, bad input is refused before anything changes, and the committed weights are the registry's."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from FastMedSAMLib import Box, Box3D, Point, Session
from FastMedSAMLib.api import STAGES
from FastMedSAMLib.errors import PromptError, WeightsError
from FastMedSAMLib.evaluation.metrics import dice
from FastMedSAMLib.io.manifest import iter_cases, read_manifest
from FastMedSAMLib.refine.clicks import deepest_error_click
from FastMedSAMLib.refine.protocol import cvpr25_box
from FastMedSAMLib.refine.split import TRAIN, VALIDATION, case_key, part, split
from FastMedSAMLib.weights.registry import get_spec

MODEL = "litemedsam-refine"


@pytest.fixture(scope="module")
def session() -> Session:
    return Session(model=MODEL, device="cpu")


@pytest.fixture(scope="module")
def btcv(manifest_path):
    """A validation BTCV slice (ABD_004_114, never trained on) and its objects."""
    entries = [e for e in part(read_manifest(manifest_path), VALIDATION) if e.image_name.endswith("ABD_004_114.png")]
    return next(iter_cases(entries))


def _clicks(session: Session, box, truth: np.ndarray, count: int):
    prediction = session.predict(box=box).mask
    dices, points = [dice(prediction, truth)], []
    for _ in range(count):
        click = deepest_error_click(prediction, truth)
        if click is None:
            break
        index, positive = click
        z, y, x = index if truth.ndim == 3 else (None, *index)
        points.append(Point(float(x), float(y), None if z is None else float(z), positive=positive))
        prediction = session.predict(box=box, points=points, mask=prediction).mask
        dices.append(dice(prediction, truth))
    return dices, points, prediction


def test_split_is_by_case_and_reported_cases_never_train(manifest_path):
    entries = read_manifest(manifest_path)
    sides = split(entries)
    assert sides == split(list(reversed(entries)))  # deterministic, order-free
    validation = {case_key(e) for e in part(entries, VALIDATION)}
    train = {case_key(e) for e in part(entries, TRAIN)}
    assert validation and train and not validation & train
    # the two DeepLesion lesions of patient 15 (and their HU copy) are one case
    lesions = {case_key(e) for e in entries if "CT_Lesion_000015" in e.image_name}
    assert len(lesions) == 1


def test_committed_weights_match_the_registry_sha256():
    spec = get_spec(MODEL)
    path = spec.repo_root / spec.sources[0].path
    assert spec.sha256 is not None and spec.base == "litemedsam"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert path.stat().st_size == spec.size < 20 * 2**20


def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    from FastMedSAMLib.weights.store import ensure_weights

    spec = get_spec(MODEL)
    (tmp_path / "models").mkdir()
    registry = json.loads(spec.registry_path.read_text(encoding="utf-8"))
    (tmp_path / "models" / "registry.json").write_text(json.dumps(registry), encoding="utf-8")
    data = bytearray((spec.repo_root / spec.sources[0].path).read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "models" / spec.file).write_bytes(bytes(data))
    monkeypatch.setenv("FASTMEDSAM_REGISTRY", str(tmp_path / "models" / "registry.json"))
    with pytest.raises(WeightsError, match="sha256"):
        ensure_weights(MODEL)


def test_clicks_improve_dice_on_validation_data(session, btcv):
    """Three clicks on each organ of a held-out slice: no organ gets worse (a click only edits around itself) and
    the liver, whose box result misses part of it, gains (measured 0.759 -> 0.881; stomach 0.924 -> 0.949)."""
    entry, image, label, found = btcv
    session.set_image(image)
    gains = {}
    for target in found[:5]:
        truth = target.mask(label)
        dices, _, _ = _clicks(session, target.box, truth, 3)
        gains[target.name] = dices[-1] - dices[0]
        assert min(b - a for a, b in zip(dices, dices[1:])) >= -0.01, (target.name, dices)
    assert max(gains.values()) >= 0.05, gains


def test_a_decode_without_clicks_averages_the_fine_tuned_and_litemedsam_decoders(session, btcv):
    """A box alone (and a box with a mask) is decoded by both decoders on one embedding, their logits averaged; a
    click goes to the fine-tuned decoder alone. On held-out organs the pair is at least as good as either alone
    on the mean (measured on this slice's first 5 organs: 0.933 vs fine-tuned 0.903, LiteMedSAM 0.911)."""
    from FastMedSAMLib.refine.engine import BOX_DECODER_SHARE, RefineEngine
    from FastMedSAMLib.refine.requests import refine_engine

    entry, image, label, found = btcv
    session.set_image(image)
    engine = refine_engine(session)
    assert engine.box_decoder is not None and BOX_DECODER_SHARE == 0.5
    alone = RefineEngine(session._engine)  # the fine-tuned decoder only
    plain = Session(model="litemedsam", device="cpu")
    plain.set_image(image)
    key = (session._image_key, 0)
    scores = {"pair": [], "fine-tuned": [], "litemedsam": []}
    differs = 0
    for target in found[:5]:
        truth = target.mask(label)
        pair = session.predict(box=target.box).mask
        embedding, frame, _, _ = session._engine._embedding(key, session._u8, dict.fromkeys(STAGES, 0.0))
        b = target.box
        frame_box = torch.as_tensor(frame.box_to_frame(b.x0, b.y0, b.x1, b.y1), dtype=torch.float32).reshape(1, 1, 4)
        with torch.inference_mode():
            mine, _ = session._engine.decoder(embedding, boxes=frame_box)
            theirs, _ = engine.box_decoder(embedding, boxes=frame_box)
        assert np.array_equal(pair, session._engine.adapter.postprocess((mine + theirs) / 2, frame))
        fine = alone.segment(key, session._u8, target.box, (), None).mask
        differs += int(not np.array_equal(pair, fine))
        for name, mask in (("pair", pair), ("fine-tuned", fine), ("litemedsam", plain.predict(box=target.box).mask)):
            scores[name].append(dice(mask, truth))
    assert differs >= 3, differs
    means = {name: float(np.mean(v)) for name, v in scores.items()}
    assert means["pair"] >= max(means["fine-tuned"], means["litemedsam"]) - 0.005, means
    (y, x), positive = deepest_error_click(pair, found[0].mask(label))
    click = dict(box=found[0].box, points=[Point(float(x), float(y), positive=positive)], mask=pair)
    assert np.array_equal(session.predict(**click).mask, alone.segment(key, session._u8, found[0].box,
                                                                       click["points"], pair).mask)


def test_the_warm_up_runs_the_click_and_the_box_decoders_and_caches_nothing(monkeypatch):
    """On a GPU a Session warms up every decoder a refinement prompt takes, on this thread and on the prefetch
    thread: a click (points and a mask prompt, fine-tuned decoder) and a box (both decoders). Here the device is
    said to be a GPU for the warm-up's check alone; the decoders are counted, the cache stays empty."""
    from FastMedSAMLib.refine.requests import refine_engine

    session = Session(model=MODEL, device="cpu")
    engine = refine_engine(session)
    calls = []

    def counted(name, decode):
        def call(embedding, **prompts):
            calls.append((name, tuple(sorted(k for k, v in prompts.items() if v is not None))))
            return decode(embedding, **prompts)
        return call

    monkeypatch.setattr(engine.slices, "decoder", counted("fine-tuned", engine.slices.decoder))
    monkeypatch.setattr(engine, "box_decoder", counted("litemedsam", engine.box_decoder))
    monkeypatch.setattr(session, "device", torch.device("cuda"))
    session._warm_up()
    once = [("fine-tuned", ("boxes", "masks", "points")), ("fine-tuned", ("boxes",)), ("litemedsam", ("boxes",))]
    assert calls == once * 2  # this thread, then the prefetch thread
    assert len(session.cache) == 0


def test_stateless_same_inputs_same_mask(session, btcv):
    entry, image, label, found = btcv
    session.set_image(image)
    target = found[0]
    truth = target.mask(label)
    first = session.predict(box=target.box).mask
    (y, x), positive = deepest_error_click(first, truth)
    prompt = dict(box=target.box, points=[Point(float(x), float(y), positive=positive)], mask=first)
    once = session.predict(**prompt).mask
    session.predict(box=found[1].box)  # something else in between changes nothing
    assert np.array_equal(session.predict(**prompt).mask, once)
    assert np.array_equal(session.predict(box=target.box).mask, first)


def test_points_alone_and_mask_alone(session, btcv):
    entry, image, label, found = btcv
    session.set_image(image)
    truth = found[0].mask(label)
    ys, xs = np.nonzero(truth)
    deep = np.argmax(ndimage.distance_transform_edt(truth)[ys, xs])
    alone = session.predict(points=[Point(float(xs[deep]), float(ys[deep]))]).mask
    assert dice(alone, truth) > 0.5
    assert session.predict(mask=truth).mask.shape == truth.shape


def test_bad_inputs_are_refused_and_change_nothing(session, btcv):
    entry, image, label, found = btcv
    session.set_image(image)
    h, w = label.shape
    box = found[0].box
    before = session.predict(box=box).mask
    bad = [
        dict(points=[Point(w + 5, 3)]),  # click outside the image
        dict(box=box, mask=np.zeros((h + 1, w), bool)),  # mask of the wrong shape
        dict(points=[Point(10, 10, positive=False)]),  # exclude-only first prompt
        dict(points=[Point(10, 10, positive=False)], mask=np.zeros((h, w), bool)),  # ... an empty mask is no prompt
        dict(box=Box3D(0, 0, 0, 5, 5, 1)),  # 3D box on a 2D image
    ]
    for prompt in bad:
        with pytest.raises(PromptError):
            session.predict(**prompt)
    assert np.array_equal(session.predict(box=box).mask, before)


def test_plain_litemedsam_still_refuses_points():
    plain = Session(model="litemedsam", device="cpu")
    plain.set_image(np.zeros((32, 32), np.uint8))
    with pytest.raises(PromptError, match="box-only"):
        plain.predict(points=[Point(3, 3)])


def test_volume_clicks_propagate_and_unreachable_slices_are_refused(manifest_path, session):
    entries = [e for e in part(read_manifest(manifest_path), VALIDATION) if e.image_name.startswith("mr_pyradiomics/brain2")]
    entry, image, label, found = next(iter_cases(entries))
    session.set_image(image)
    truth = found[0].mask(label)
    box = cvpr25_box(truth)
    dices, points, result = _clicks(session, box, truth, 2)
    assert result.shape == truth.shape
    assert dices[-1] >= dices[0] - 0.01, dices
    assert np.array_equal(session.predict(box=box, points=points, mask=result).mask,
                          session.predict(box=box, points=points, mask=result).mask)
    outside = box.z1 + 1 if box.z1 + 1 < truth.shape[0] else box.z0 - 1
    with pytest.raises(PromptError, match="cannot reach"):
        session.predict(box=box, points=[Point(box.x0 + 1, box.y0 + 1, outside)])
    with pytest.raises(PromptError, match="shape"):
        session.predict(box=box, points=points, mask=result[:-1])
    assert box.z1 != box.z0
    with pytest.raises(PromptError, match="one slice"):  # a 2D box with a click on another slice
        session.predict(box=Box(box.x0, box.y0, box.x1, box.y1, z=box.z0), points=[Point(box.x0 + 1, box.y0 + 1, box.z1)])


def test_pause_knob_applies_to_the_refine_model(btcv):
    entry, image, label, found = btcv
    paused = Session(model=MODEL, device="cpu", pause=0.5)
    paused.set_image(image)
    prediction = paused.predict(box=found[0].box)
    assert prediction.paused_fraction > 0
    assert dice(prediction.mask, found[0].mask(label)) > 0.5


def test_refine_model_keeps_litemedsam_encoder(tmp_path):
    """The image encoder comes from litemedsam's verified file, unchanged; our file holds only the decoder side."""
    from FastMedSAMLib.models import load_model

    spec = get_spec(MODEL)
    copy = tmp_path / spec.file
    shutil.copyfile(spec.repo_root / spec.sources[0].path, copy)
    refine = load_model(MODEL, weights=copy)
    plain = load_model("litemedsam")
    for (name, a), (_, b) in zip(refine.image_encoder.state_dict().items(), plain.image_encoder.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), name


def _rule(ndim, **fields):
    """The engine's click rule for slices (2) or volumes (3), its fields changed; without the bands along the
    previous border unless asked (those have a test of their own)."""
    from FastMedSAMLib.refine.focus import NO_BAND, RULE_2D, RULE_3D

    return replace(RULE_2D if ndim == 2 else RULE_3D, **{"border": NO_BAND, "spot_border": NO_BAND, **fields})


@pytest.mark.parametrize("ndim", [2, 3])
def test_a_click_keeps_only_the_change_it_lands_in(ndim):
    from FastMedSAMLib.refine.focus import local_edit

    shape = (6, 40, 40)[-ndim:]
    previous = np.zeros(shape, dtype=bool)
    refined = previous.copy()
    near = (slice(1, 4),) * (ndim - 2) + (slice(5, 12), slice(5, 12))  # grows where the click is
    far = (slice(1, 4),) * (ndim - 2) + (slice(25, 35), slice(25, 35))  # a leak nobody pointed at
    refined[near] = refined[far] = True
    click = Point(8, 8, 2 if ndim == 3 else None)
    edited = local_edit(previous, refined, [click], _rule(ndim))
    assert edited[near].all() and not edited[far].any()
    assert np.array_equal(local_edit(previous, refined, [Point(30, 30, 2 if ndim == 3 else None), click], _rule(ndim)), refined)
    unobeyed = Point(20, 20, 2 if ndim == 3 else None)  # the decoder leaves its pixel outside
    assert np.array_equal(local_edit(previous, refined, [unobeyed], _rule(ndim, follow=0)), previous)
    followed = local_edit(previous, refined, [unobeyed], _rule(ndim))  # the click still sets its own spot, nothing else
    spot = followed & ~previous
    assert spot[(2,) * (ndim - 2) + (20, 20)] and spot.sum() == 29  # a radius-3 disk, on the click's slice only


@pytest.mark.parametrize("ndim", [2, 3])
def test_a_click_changes_only_its_side_in_its_focus_window_and_only_if_obeyed(ndim):
    from FastMedSAMLib.refine.focus import local_edit

    shape = (6, 60, 60)[-ndim:]
    lead = (slice(1, 4),) * (ndim - 2)
    previous = np.zeros(shape, dtype=bool)
    previous[lead + (slice(10, 30), slice(10, 30))] = True  # the object so far
    refined = previous.copy()
    refined[lead + (slice(10, 30), slice(30, 55))] = True  # grows right, far beyond what was pointed at
    click = Point(33, 20, 2 if ndim == 3 else None)  # an include click 4 px right of the mask's border
    edited = local_edit(previous, refined, [click], _rule(ndim, focus=2.0))
    yy, xx = np.nonzero(edited[(2,) if ndim == 3 else ()] & ~previous[(2,) if ndim == 3 else ()])
    assert edited[lead + (20, 33)].all() and np.hypot(yy - 20, xx - 33).max() <= 2.0 * 4 + 1e-9
    assert not edited[lead + (slice(None), slice(45, 55))].any()  # far from the click: untouched
    assert np.array_equal(local_edit(previous, refined, [click], _rule(ndim, focus=float("inf"))), refined)
    # an exclude click the decoder does not follow (its pixel ends up inside) changes nothing, not even nearby
    exclude = Point(33, 20, 2 if ndim == 3 else None, positive=False)
    assert np.array_equal(local_edit(previous, refined, [exclude], _rule(ndim)), previous)
    # an exclude click inside the mask that the decoder ignores still removes its own spot, on its slice only
    carved = local_edit(previous, previous.copy(), [Point(20, 20, 2 if ndim == 3 else None, positive=False)], _rule(ndim))
    assert (previous & ~carved).sum() == 29 and not carved[(2,) * (ndim - 2) + (20, 20)]
    # an older click whose pixel the new prediction turns wrong keeps its pixel
    undo = previous.copy()
    undo[lead + (slice(10, 30), slice(10, 15))] = False
    assert np.array_equal(local_edit(previous, undo, [Point(12, 20, 2 if ndim == 3 else None)], _rule(ndim)), previous)
    # an include click adds only: the same prediction also eating into the mask beside the click keeps the mask
    shifted = refined.copy()
    shifted[lead + (slice(10, 30), slice(26, 30))] = False
    edited = local_edit(previous, shifted, [click], _rule(ndim, focus=float("inf")))
    assert edited[lead + (slice(10, 30), slice(26, 30))].all() and edited[lead + (20, 33)].all()


def test_the_spot_of_a_click_not_followed_is_as_wide_as_the_click_is_deep():
    from FastMedSAMLib.refine.focus import local_edit

    previous = np.zeros((40, 40), dtype=bool)
    previous[10:30, 10:30] = True
    yy, xx = np.ogrid[:40, :40]
    for x, radius in ((10, 2.0), (11, 2.0), (12, 3.0), (20, 3.0)):  # depths 1, 2, 3, 10: from 2 px up to 3 px
        carved = local_edit(previous, previous.copy(), [Point(x, 20, positive=False)], _rule(2))
        assert np.array_equal(previous & ~carved, previous & ((yy - 20) ** 2 + (xx - x) ** 2 <= radius**2)), x


def test_a_slice_click_reaches_along_the_previous_border_and_so_does_the_spot_of_one_not_followed():
    from FastMedSAMLib.refine.focus import RULE_2D, local_edit

    previous = np.zeros((60, 60), dtype=bool)
    previous[10:30, 10:30] = True
    refined = previous.copy()
    refined[10:30, 30:38] = True  # an 8 px sliver along the whole right side, as the decoder fills it
    click = Point(33, 20)  # include, depth 4 (nearest mask pixel: (20, 29))
    disk_only = local_edit(previous, refined, [click], _rule(2))
    assert disk_only[20, 33] and not disk_only[10, 30]  # 10.4 px from the click: outside a disk of 1.5 x 4
    edited = local_edit(previous, refined, [click], RULE_2D)  # + within 0.5 x 4 px of the border, 12 x 4 px along it
    assert edited[10:30, 30:32].all() and not edited[10, 32] and not edited[10, 35]
    assert np.array_equal(edited & ~refined, np.zeros_like(edited))  # still only what the decoder proposed
    # a click the decoder does not follow: its spot also takes the pixels within 1 x 4 px of the border, up to 1.5 x
    # 4 px from the click; the disk alone (3 px) would not reach (15, 30)
    followed = local_edit(previous, previous.copy(), [click], RULE_2D)
    assert followed[15, 30] and not local_edit(previous, previous.copy(), [click], _rule(2))[15, 30]
    assert followed[20, 33] and not followed[20, 37] and not followed[12, 30]
    # however deep the click, the spot stays within 6 px of it (an ignored exclude click 10 px deep; uncapped, its
    # band would reach 15 px)
    deep = local_edit(previous, previous.copy(), [Point(20, 20, positive=False)], RULE_2D)
    yy, xx = np.nonzero(previous & ~deep)
    assert len(yy) > 29 and np.hypot(yy - 20, xx - 20).max() <= 6


def test_eval_runs_the_asked_side_of_the_split_and_refuses_the_other_protocols_sides(manifest_path, tmp_path):
    from FastMedSAMLib.cli import main

    base = ["eval", "--manifest", str(manifest_path), "--datasets", "derm_ham10000", "--max-targets", "1"]
    assert main([*base, "--split", "train", "--out", str(tmp_path / "box.json")]) == 2  # a refine side, box protocol
    assert main([*base, "--protocol", "refine", "--split", "calibration", "--out", str(tmp_path / "r.json")]) == 2
    assert not list(tmp_path.iterdir())
    out = tmp_path / "train.json"
    assert main([*base, "--protocol", "refine", "--clicks", "1", "--noc-max", "1", "--split", "train",
                 "--focus", "2", "--focus-3d", "inf", "--border", "0,0", "--spot-depth", "1.5", "--quiet", "--out",
                 str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    sides = split(read_manifest(manifest_path))
    assert report["split"] == TRAIN and report["rows"]
    assert report["rule"]["focus"] == 2.0 and report["rule"]["border"] == [0, 0] and report["rule_3d"]["focus"] == float("inf")
    assert report["rule"]["spot_depth"] == 1.5 and report["rule_3d"]["spot_depth"] == float("inf")
    assert all(sides[case_key(e)] == TRAIN for e in read_manifest(manifest_path)
               if e.image_name in {r["image"] for r in report["rows"]})


def test_a_volume_click_reaches_fewer_voxels_the_farther_the_slice():
    from FastMedSAMLib.refine.focus import focus_window, local_edit

    previous = np.zeros((40, 60, 60), dtype=bool)
    previous[:, 10:30, 10:30] = True  # a column through every slice
    refined = previous.copy()
    refined[:, 10:30, 30:40] = True  # grows right on every slice, as one 26-connected piece
    click = Point(33, 20, 20)  # include, 4 px right of the border on slice 20: a ball of radius 2 x 4 = 8 voxels
    window = focus_window(previous, click, _rule(3, focus=2.0, max_slices=float("inf")))
    assert window[20, 20, 33 - 8] and not window[20, 20, 33 - 9]  # in-plane radius 8 on the click's slice
    assert window[28, 20, 33] and not window[29, 20, 33] and not window[20 - 9].any()  # 8 slices up / down, no more
    edited = local_edit(previous, refined, [click], _rule(3, focus=2.0, max_slices=float("inf")))
    grown = (edited & ~previous).reshape(40, -1).sum(axis=1)
    assert grown[20] > grown[26] > grown[28] > 0 and not grown[:12].any() and not grown[29:].any()


def test_a_volume_click_changes_what_lies_nearer_to_it_than_to_the_other_signs_clicks_within_twelve_slices():
    from FastMedSAMLib.refine.focus import RULE_3D, focus_window, local_edit

    previous = np.zeros((40, 60, 60), dtype=bool)
    previous[:, 10:30, 10:30] = True
    refined = previous.copy()
    refined[:, 10:30, 24:30] = False  # the decoder strips the right side on every slice ...
    refined[:, 10:30, 30:34] = True  # ... and grows it on every slice
    include, exclude = Point(32, 20, 20), Point(27, 20, 26, positive=False)
    edited = local_edit(previous, refined, [include, exclude], RULE_3D)
    assert edited[20, 20, 27] and not edited[26, 20, 27]  # the strip goes only where the exclude click is nearer
    assert edited[20, 20, 32] and not edited[26, 20, 32]  # the growth only where the include click is nearer
    anyone = local_edit(previous, refined, [include, exclude], replace(RULE_3D, nearest_click=False))
    assert not anyone[20, 20, 27] and anyone[26, 20, 32]
    deep = Point(20, 20, 20, positive=False)  # 10 px deep: a ball of 30 voxels, but 12 slices up and down at most
    window = focus_window(previous, deep, RULE_3D)
    assert window[8].any() and window[32].any() and not window[7].any() and not window[33].any()
