"""The FastSAM3D / SAM-Med3D click protocol: click placement rules and a seeded run on real 3D cases."""
from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path
from typing import List

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from FastMedSAMLib.engines.crop_engine import CanonicalGrid, grid_array, to_sitk
from FastMedSAMLib.errors import FastMedSAMError, WeightsError
from FastMedSAMLib.evaluation import clicks3d
from FastMedSAMLib.evaluation.clicks3d import DEEP_CLICKS, Click, next_click, run_clicks3d, summarise_dice
from FastMedSAMLib.io.manifest import iter_cases, read_manifest

SHAPE = (40, 44, 48)


def ball(centre, radius) -> np.ndarray:
    grid = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def reference_deep_click(prediction, truth, rng) -> Click:
    """SAM-Med3D's RITM click written out on the whole (padded) crop, for comparison."""
    fn, fp = truth & ~prediction, prediction & ~truth
    fn_dt = distance_transform_edt(np.pad(fn, 1))[1:-1, 1:-1, 1:-1]
    fp_dt = distance_transform_edt(np.pad(fp, 1))[1:-1, 1:-1, 1:-1]
    dt = fn_dt if fn_dt.max() > fp_dt.max() else fp_dt
    points = np.argwhere(dt > max(fn_dt.max(), fp_dt.max()) / 2.0)
    point = tuple(int(v) for v in points[rng.integers(len(points))])
    return Click(point, bool(fn[point]), "deep")


def test_first_click_is_positive_and_deep_inside_the_target():
    truth = ball((20, 22, 25), 9)
    rng = np.random.default_rng(3)
    depth = distance_transform_edt(np.pad(truth, 1))[1:-1, 1:-1, 1:-1]
    for _ in range(20):
        click = next_click(np.zeros(SHAPE, dtype=bool), truth, rng, deep=True)
        assert click.positive and click.method == "deep"
        assert depth[click.position] > depth.max() / 2


def test_deep_click_goes_to_the_deeper_error_region_with_the_right_label():
    truth = ball((12, 12, 12), 3) | ball((28, 30, 32), 5)
    prediction = ball((28, 30, 32), 5) | ball((12, 30, 14), 8)  # misses a small ball, adds a big false one
    fp = prediction & ~truth
    depth = distance_transform_edt(np.pad(fp, 1))[1:-1, 1:-1, 1:-1]
    rng = np.random.default_rng(0)
    for _ in range(20):
        click = next_click(prediction, truth, rng, deep=True)
        assert not click.positive and fp[click.position]
        assert depth[click.position] > depth.max() / 2


def test_deep_click_equals_the_reference_drawn_on_the_whole_crop():
    rng = np.random.default_rng(11)
    for seed in range(6):
        blobs = np.random.default_rng(seed)
        truth = ball(blobs.integers(8, 32, 3), blobs.integers(3, 10))
        prediction = ball(blobs.integers(8, 32, 3), blobs.integers(3, 10))
        state = rng.bit_generator.state
        ours = next_click(prediction, truth, rng, deep=True)
        rng.bit_generator.state = state
        assert ours == reference_deep_click(prediction, truth, rng)


def test_uniform_clicks_cover_the_whole_error_region_with_the_right_labels():
    truth = ball((20, 20, 20), 8)
    prediction = ball((20, 20, 26), 8)
    fn, fp = truth & ~prediction, prediction & ~truth
    rng = np.random.default_rng(5)
    clicks = [next_click(prediction, truth, rng, deep=False) for _ in range(400)]
    assert all(c.method == "uniform" and (fn | fp)[c.position] for c in clicks)
    assert all(c.positive == bool(fn[c.position]) for c in clicks)
    share = np.mean([c.positive for c in clicks])
    assert abs(share - fn.sum() / (fn.sum() + fp.sum())) < 0.1  # uniform over the union (the two are equal here)


def test_no_error_left_means_no_click():
    truth = ball((20, 20, 20), 6)
    rng = np.random.default_rng(0)
    assert next_click(truth, truth, rng, deep=True) is None
    assert next_click(truth, truth, rng, deep=False) is None


def test_max_and_last_dice_over_the_first_n_clicks():
    scores = summarise_dice([0.2, 0.6, 0.5, 0.4, 0.7], [1, 3, 5])
    assert scores == {"max@1": 0.2, "last@1": 0.2, "max@3": 0.6, "last@3": 0.5, "max@5": 0.7, "last@5": 0.7}


def test_a_box_model_bad_click_counts_or_no_installed_model_are_clear_errors(manifest_path: Path, monkeypatch):
    with pytest.raises(FastMedSAMError, match="3D point model"):
        run_clicks3d(manifest_path, "litemedsam", weights="recipe")
    with pytest.raises(FastMedSAMError, match="positive integers"):
        run_clicks3d(manifest_path, "fastsam3d", ["0", "x"], weights="recipe")
    monkeypatch.setattr(clicks3d, "installed_point_model", lambda: None)
    with pytest.raises(WeightsError, match="models pull fastsam3d"):
        run_clicks3d(manifest_path, None, weights="official")


DATASETS = ["mr_pyradiomics_phantom", "ct_dcmqi_3slice"]


@pytest.fixture(scope="module")
def reports(manifest_path: Path, tmp_path_factory):
    """The protocol on one target of the prostate phantom and one of the dcmqi CT, recipe FastSAM3D: twice with
    one seed, then the phantom with another through the command-line entry (`eval --protocol clicks3d` arguments)."""
    def run(seed: int):
        return run_clicks3d(manifest_path, "fastsam3d", [1, 3], seed, "recipe", datasets=DATASETS, max_targets=1)

    out = tmp_path_factory.mktemp("clicks3d") / "report.json"
    args = Namespace(
        manifest=manifest_path, model=None, clicks=["3", "1"], seed=8, weights="recipe", device="cpu",
        datasets=DATASETS[:1], max_targets=1, out=out, quiet=True,
    )
    printed: List[str] = []
    assert clicks3d.run_cli(args, write=printed.append) == 0
    assert "meaningless" in printed[0] and "| mr_pyradiomics_phantom | 1 |" in printed[0]
    return run(7), run(7), json.loads(out.read_text(encoding="utf-8"))


def _without_timings(rows):
    return [{k: v for k, v in row.items() if k not in ("seconds", "encoder_ms")} for row in rows]


def test_clicks3d_is_reproducible_with_a_seed(reports):
    first, again, other = reports
    assert [r["dataset"] for r in first["rows"]] == ["ct_dcmqi_3slice", "mr_pyradiomics_phantom"]
    assert _without_timings(first["rows"]) == _without_timings(again["rows"])
    phantom = [r for r in first["rows"] if r["dataset"] == DATASETS[0]]
    assert [r["target"] for r in other["rows"]] == [r["target"] for r in phantom]
    assert [r["clicks"] for r in other["rows"]] != [r["clicks"] for r in phantom]


def test_clicks3d_report_is_labelled_and_consistent(reports):
    report = reports[0]
    assert report["weights"] == "recipe" and report["meaningful"] is False
    assert "meaningless" in report["header"] and "meaningless" in clicks3d.markdown(report)
    assert report["clicks"] == [1, 3]
    for row in report["rows"]:
        assert len(row["dice"]) == 3 and all(0.0 <= d <= 1.0 for d in row["dice"])
        assert row["scores"]["max@3"] == max(row["dice"]) >= row["scores"]["last@3"] == row["dice"][2]
        assert [c[4] for c in row["clicks"]] == ["deep"] * DEEP_CLICKS + ["uniform"]
    assert report["summary"]["all"]["targets"] == 2


def test_clicks3d_first_click_lies_deep_in_the_target(reports, manifest_path: Path):
    """Recomputes each target's 128³ crop of the label and checks click 1: positive, in the target, deeper than half
    the target's maximal depth."""
    rows = {(r["image"], r["target"]): r for r in reports[0]["rows"]}
    entries = [e for e in read_manifest(manifest_path) if e.dim == "3D"]
    for entry, image, label, targets in iter_cases(entries, DATASETS):
        grid = CanonicalGrid.of(image)
        labels = grid_array(grid, to_sitk(label, image.origin, image.spacing, image.direction))
        for target in targets:
            row = rows.get((entry.image_name, target.name))
            if row is None:
                continue
            truth = grid.crop(row["crop_start"]).window(target.mask(labels))
            assert truth.sum() == row["voxels"] > 0
            depth = distance_transform_edt(np.pad(truth, 1))[1:-1, 1:-1, 1:-1]
            d, h, w, positive, method = row["clicks"][0]
            assert positive == 1 and method == "deep" and truth[d, h, w]
            assert depth[d, h, w] > depth.max() / 2
