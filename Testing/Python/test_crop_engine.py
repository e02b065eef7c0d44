"""3D point workflow: the 1.5 mm RAS+ crop geometry, exact paste-back, and the Session with recipe-weight FastSAM3D."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from FastMedSAMLib import Box, Box3D, Point, Session
from FastMedSAMLib.engines.crop_engine import (
    CROP,
    SPACING_MM,
    CanonicalGrid,
    image_to_sitk,
    paste_back,
    zscore_positive,
)
from FastMedSAMLib.errors import PromptError
from FastMedSAMLib.io.geometry import index_to_lps, lps_to_index
from FastMedSAMLib.io.images import Image
from FastMedSAMLib.models.recipe import recipe_state_dict

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# oblique, with a flipped axis (det -1): the canonical reorientation must both permute and flip
OBLIQUE = rotation(2, 20.0) @ rotation(0, -15.0) @ np.diag([1.0, -1.0, 1.0])
SPACING = (0.8, 1.1, 2.5)  # x, y, z mm


def voxel_world(image: Image) -> np.ndarray:
    """LPS of every voxel centre, (Z, Y, X, 3)."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in image.shape_zyx), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(np.float64)
    return index_to_lps(image, ijk).reshape(*image.shape_zyx, 3)


def oblique_image(shape_zyx, origin=(12.0, -30.0, 40.0), values=None) -> Image:
    array = np.zeros(shape_zyx, dtype=np.float32) if values is None else values
    return Image.from_array(array, spacing=SPACING, origin=origin, direction=OBLIQUE)


# -- geometry ----------------------------------------------------------------------------------------------------
def test_canonical_grid_is_torchio_resample_then_to_canonical():
    image = oblique_image((12, 20, 16))
    grid = CanonicalGrid.of(image)
    # torchio Resample(1.5) reference grid, written from its documented rule
    old_spacing, old_size = np.array(SPACING), np.array([16, 20, 12])
    size = np.ceil(old_size * old_spacing / SPACING_MM).astype(int)
    first = index_to_lps(image, 0.5 * (SPACING_MM / old_spacing - 1))
    axes = [np.arange(n) for n in size]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    torchio_points = first + ijk @ (OBLIQUE * SPACING_MM).T
    ours = grid.to_lps(np.stack(np.meshgrid(*(np.arange(n) for n in grid.size), indexing="ij"), -1).reshape(-1, 3))
    assert sorted(grid.size) == sorted(size.tolist())
    np.testing.assert_allclose(np.sort(ours, axis=0), np.sort(torchio_points, axis=0), atol=1e-9)
    # RAS+: each canonical axis runs towards +R, +A, +S (its dominant component, positive)
    ras = LPS_TO_RAS @ grid.direction
    assert np.all(np.argmax(np.abs(ras), axis=0) == [0, 1, 2])
    assert np.all(np.diag(ras) > 0)
    np.testing.assert_allclose(grid.direction.T @ grid.direction, np.eye(3), atol=1e-12)


def test_crop_is_in_torchio_axis_order_and_exact():
    """A linear intensity (exact under linear interpolation) lands at the crop voxels' own world positions, with the
    tensor's (d, h, w) along canonical (i, j, k); voxels outside the image are 0."""
    image = oblique_image((30, 40, 36))
    world = voxel_world(image)
    ras = world @ LPS_TO_RAS
    values = (500.0 + 2.0 * ras[..., 0] + 3.0 * ras[..., 1] + 5.0 * ras[..., 2]).astype(np.float32)
    image = oblique_image((30, 40, 36), values=values)
    grid = CanonicalGrid.of(image)
    centre = np.floor(grid.to_index(index_to_lps(image, (18, 20, 15))) + 0.5).astype(int)[0]
    crop = grid.crop_around(centre, centre)
    volume = crop.resample(image_to_sitk(image))
    assert volume.shape == (CROP,) * 3

    dhw = np.stack(np.meshgrid(*(np.arange(CROP),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    lps = crop.grid.to_lps(dhw + np.asarray(crop.start))
    ijk = lps_to_index(image, lps)
    size = np.array([36, 40, 30])
    interior = np.all((ijk >= 0) & (ijk <= size - 1), axis=1)
    outside = np.any((ijk < -0.5) | (ijk > size - 0.5), axis=1)
    assert interior.sum() > 10_000 and outside.sum() > 10_000
    r = lps @ LPS_TO_RAS
    expected = 500.0 + 2.0 * r[:, 0] + 3.0 * r[:, 1] + 5.0 * r[:, 2]
    np.testing.assert_allclose(volume.reshape(-1)[interior], expected[interior], atol=2e-3)
    assert np.all(volume.reshape(-1)[outside] == 0)


def test_zscore_uses_voxels_above_zero_with_unbiased_std():
    rng = np.random.default_rng(0)
    crop = np.where(rng.random((16, 16, 16)) < 0.3, 0.0, rng.normal(100.0, 20.0, (16, 16, 16))).astype(np.float32)
    positive = crop[crop > 0].astype(np.float64)
    reference = torch.from_numpy(crop.astype(np.float64))
    expected = (reference - positive.mean()) / torch.from_numpy(positive).std()  # torch.std: n - 1, as torchio
    np.testing.assert_allclose(zscore_positive(crop), expected.numpy(), rtol=1e-5, atol=1e-5)
    flat = np.full((8, 8, 8), -5.0, dtype=np.float32)  # no voxel > 0 and no spread: finite, not NaN
    assert np.all(np.isfinite(zscore_positive(flat)))


def test_paste_back_lands_a_world_sphere_exactly_on_an_oblique_anisotropic_grid():
    """Crop-space logits of a world sphere (signed distance, in mm) pasted back onto an oblique, anisotropic grid
    that is longer than one crop equal the sphere rasterised on that grid; outside the crop the previous mask stays."""
    shape = (110, 50, 60)  # z extent 275 mm: longer than a 192 mm crop
    image = oblique_image(shape)
    world = voxel_world(image)
    centre = index_to_lps(image, (24.3, 30.6, 22.2))
    radius = 18.0
    grid = CanonicalGrid.of(image)
    voxel = np.floor(grid.to_index(centre) + 0.5).astype(int)[0]
    crop = grid.crop_around(voxel, voxel)
    dhw = np.stack(np.meshgrid(*(np.arange(CROP),) * 3, indexing="ij"), axis=-1)
    crop_lps = crop.grid.to_lps(dhw.reshape(-1, 3) + np.asarray(crop.start))
    logits = (radius - np.linalg.norm(crop_lps - centre, axis=1)).reshape((CROP,) * 3).astype(np.float32)

    previous = np.zeros(shape, dtype=bool)
    previous[100:] = True  # outside the crop: must survive
    previous[:, :5, :5] = True  # inside the crop, away from the sphere: must be replaced
    mask, z_range = paste_back(logits, crop, image, previous)

    in_crop_index = crop.to_crop_index(world.reshape(-1, 3)).reshape(*shape, 3)
    inside = np.all((in_crop_index >= -0.5) & (in_crop_index <= CROP - 0.5), axis=-1)
    distance = np.linalg.norm(world - centre, axis=-1)
    sphere = distance < radius
    clear = np.abs(distance - radius) > 0.05  # linear interpolation of a 18 mm sphere's distance is off by < 0.02 mm
    assert sphere.sum() > 2000
    assert np.array_equal(mask[inside & clear], sphere[inside & clear])
    assert np.array_equal(mask[~inside], previous[~inside])
    assert not mask[:, :5, :5][inside[:, :5, :5]].any()
    covered = np.nonzero(inside.any(axis=(1, 2)))[0]
    assert z_range == (int(covered[0]), int(covered[-1]))
    assert z_range[1] < 100 and mask[100:].all()


# -- the Session with FastSAM3D recipe weights ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def recipe_weights(parity_dir: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fastsam3d") / "fastsam3d.recipe.pth"
    state = recipe_state_dict(parity_dir / "fastsam3d.keys.json", parity_dir / "fastsam3d.int_buffers.npz", gain=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def session(recipe_weights: Path) -> Session:
    return Session(model="fastsam3d", device="cpu", weights=recipe_weights)


LONG_SHAPE = (150, 64, 64)  # z: 150 slices x 2 mm = 300 mm


@pytest.fixture(scope="module")
def long_volume() -> Image:
    z, y, x = np.meshgrid(*(np.arange(n) for n in LONG_SHAPE), indexing="ij")
    blob = (((z - 60) / 40.0) ** 2 + ((y - 32) / 15.0) ** 2 + ((x - 30) / 12.0) ** 2) <= 1
    values = (100.0 + 400.0 * blob + 20.0 * np.sin(x / 5.0) * np.cos(y / 7.0)).astype(np.float32)
    direction = np.diag([1.0, -1.0, 1.0])
    return Image.from_array(values, spacing=(1.0, 1.0, 2.0), origin=(5.0, -7.0, 100.0), direction=direction)


def test_clicks_outside_the_volume_or_without_slice_are_refused(session: Session, long_volume: Image):
    session.set_image(long_volume)
    for point in (Point(64.0, 10.0, 5.0), Point(10.0, -0.6, 5.0), Point(10.0, 10.0, 150.0)):
        with pytest.raises(PromptError, match="outside"):
            session.predict(points=[Point(30.0, 30.0, 60.0), point])
    with pytest.raises(PromptError, match="slice index z"):
        session.predict(points=[Point(30.0, 30.0)])


def test_clicks_further_apart_than_one_crop_are_refused(session: Session, long_volume: Image):
    session.set_image(long_volume)
    misses = session.cache_info()["misses"]
    with pytest.raises(PromptError, match="192 mm"):
        session.predict(points=[Point(30.0, 30.0, 5.0), Point(30.0, 30.0, 140.0, positive=False)])
    assert session.cache_info()["misses"] == misses  # refused before any encoding


def test_crop_holds_all_clicks_and_a_click_inside_it_reuses_the_embedding(session: Session, long_volume: Image):
    session.set_image(long_volume)
    session.clear_cache()
    first = session.predict(points=[Point(30.0, 30.0, 20.0)])
    assert first.encoder_calls == 1 and first.mask.shape == LONG_SHAPE
    assert first.z_range[0] <= 20 <= first.z_range[1] and first.z_range[1] - first.z_range[0] + 1 < LONG_SHAPE[0]
    # 160 mm away: outside the first crop, so a new crop holding both clicks is encoded
    p2 = Point(34.0, 28.0, 100.0, positive=False)
    second = session.predict(points=[Point(30.0, 30.0, 20.0), p2])
    assert second.encoder_calls == 1
    assert second.z_range[0] <= 20 and second.z_range[1] >= 100
    hits = session.cache_info()["hits"]
    third = session.predict(points=[Point(30.0, 30.0, 20.0), p2, Point(31.0, 33.0, 60.0)])
    assert third.encoder_calls == 0 and third.timings["encode"] == 0.0
    assert session.cache_info()["hits"] == hits + 1
    assert third.z_range == second.z_range
    assert np.isfinite(third.iou)
    assert not np.array_equal(third.mask, second.mask)  # the new click changed the result

    # the same clicks replayed from scratch on that crop give the same mask as the incremental path
    session.predict(points=[p2])
    replayed = session.predict(points=[Point(30.0, 30.0, 20.0), p2, Point(31.0, 33.0, 60.0)])
    assert replayed.encoder_calls == 0
    assert np.array_equal(replayed.mask, third.mask)


def test_previous_mask_is_kept_outside_the_crop_and_pulls_the_crop_when_it_fits(session: Session, long_volume: Image):
    session.set_image(long_volume)
    far = np.zeros(LONG_SHAPE, dtype=bool)
    far[140:, 10:20, 10:20] = True  # 240 mm from the click: cannot share its crop
    result = session.predict(points=[Point(30.0, 30.0, 20.0)], mask=far)
    assert result.z_range[1] < 140
    assert np.array_equal(result.mask[140:], far[140:])

    near = np.zeros(LONG_SHAPE, dtype=bool)
    near[75:80, 30:34, 30:34] = True  # 110-120 mm from the click: the crop must cover it
    refined = session.predict(points=[Point(30.0, 30.0, 20.0)], mask=near)
    assert refined.z_range[0] <= 20 and refined.z_range[1] >= 79
    with pytest.raises(PromptError, match="shape"):
        session.predict(points=[Point(30.0, 30.0, 20.0)], mask=near[:-1])


def test_box_prompts_and_2d_images_are_refused(session: Session, long_volume: Image):
    session.set_image(long_volume)
    with pytest.raises(PromptError, match="point prompts, not boxes"):
        session.predict(box=Box3D(10, 10, 10, 40, 40, 30))
    with pytest.raises(PromptError, match="point prompts, not boxes"):
        session.predict(box=Box(10, 10, 40, 40, z=20))
    session.set_image(np.full((48, 40), 50.0, dtype=np.float32), spacing=(0.5, 0.5, 1.0))
    with pytest.raises(PromptError, match="needs a volume"):
        session.predict(points=[Point(10.0, 10.0, 0.0)])


def test_the_model_sees_the_click_where_the_image_has_it(session: Session, long_volume: Image, monkeypatch):
    """A marker block around the clicked voxel is where the click lands in the encoder input."""
    values = long_volume.array.copy()
    values[70:73, 10:15, 31:36] = 5000.0  # around voxel (x=33, y=12, z=71)
    image = replace(long_volume, array=values)
    engine = session._engine
    sent = []
    original = engine.click_round

    def recording(embedding, point_dhw, positive, low_res):
        sent.append((point_dhw, positive))
        return original(embedding, point_dhw, positive, low_res)

    monkeypatch.setattr(engine, "click_round", recording)
    session.set_image(image)
    point = Point(33.4, 12.2, 71.4, positive=True)
    session.predict(points=[point])
    (dhw, positive), = sent
    assert positive
    crop = engine.choose_crop(image, [point], session._image_key)
    tensor = engine.model_input(image, crop)[0, 0].numpy()
    d, h, w = (int(round(v)) for v in dhw)
    assert tensor[d, h, w] == tensor.max()
