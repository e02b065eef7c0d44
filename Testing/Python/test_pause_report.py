"""`fastmedsam pause-map` and `fastmedsam pause-curve`: real weights, committed pause heads, real manifest images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from scipy import ndimage

from FastMedSAMLib.cli import main
from FastMedSAMLib.errors import FastMedSAMError
from FastMedSAMLib.evaluation.box_protocol import REFERENCE
from FastMedSAMLib.models import load_model
from FastMedSAMLib.pause import load_pause_heads, paused_encoder
from FastMedSAMLib.pause.report import NO_PAUSING, accuracy, dataset_colour
from FastMedSAMLib.pause.split import committed_split
from FastMedSAMLib.pause.visualize import LINE, SCALE, pause_depths

DEEPLESION = "ct_deeplesion_medsam2/CT_Lesion_000001_02_01_008-023.npz"  # 512x512 CT slices, windowed to uint8


@pytest.fixture(scope="module")
def heads():
    return load_pause_heads("litemedsam")


@pytest.fixture(scope="module")
def ct_slice(data_dir: Path) -> np.ndarray:
    """The middle slice of a real DeepLesion CT volume, as the Session sees it (uint8 RGB)."""
    from FastMedSAMLib.commands.pause_map import load_slice

    rgb, _ = load_slice(data_dir / DEEPLESION, None)
    return rgb


@pytest.fixture(scope="module")
def eval_report(manifest_path: Path, tmp_path_factory, litemedsam_checkpoint) -> Path:
    """A real box-protocol eval at pause 0 and 1 on the evaluation split's chest X-rays: xray_lung (2 targets)
    and xray_lung_cc (4), so the mean over datasets and the mean over targets differ."""
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    code = main(["eval", "--manifest", str(manifest_path), "--datasets", "xray_lung,xray_lung_cc", "--split",
                 "evaluation", "--pause", "0,1", "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_eval_split_scores_only_evaluation_images(eval_report: Path) -> None:
    report = json.loads(eval_report.read_text(encoding="utf-8"))
    evaluation = set(committed_split()["evaluation"])
    assert report["split"] == "evaluation" and set(report["images"]) == evaluation
    assert {c["image"] for c in report["cases"]} == {n for n in evaluation if n.startswith("xray_lung/")}


def test_pause_map_png_on_a_ct_slice(data_dir: Path, tmp_path: Path, heads, litemedsam_checkpoint, capsys) -> None:
    images = {}
    for pause in ("0.25", "1"):
        out = tmp_path / f"map_{pause}.png"
        assert main(["pause-map", str(data_dir / DEEPLESION), "--pause", pause, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert str(out) in printed and "slice" in printed
        images[pause] = np.asarray(PILImage.open(out).convert("RGB"))
    size = 256 * SCALE  # LiteMedSAM's 256x256 frame, drawn twice side by side, legend below
    assert images["1"].shape == (size + LINE * (len(heads.depths) + 2), 2 * size, 3)
    assert images["0.25"].shape == images["1"].shape
    left, right = (slice(0, size), slice(0, size)), (slice(0, size), slice(size, 2 * size))
    np.testing.assert_array_equal(images["0.25"][left], images["1"][left])  # the same input frame
    assert (images["0.25"][right] != images["1"][right]).any(axis=2).mean() > 0.2  # the tint follows the knob


@pytest.mark.parametrize("extra, message", [
    (["--slice", "99"], "outside"),
    (["--pause", "0"], "plain model"),
    (["--pause", "1.5"], "[0, 1]"),
    (["--model", "medficientsam-l0"], "no pause heads"),
])
def test_pause_map_bad_input(data_dir: Path, tmp_path: Path, capsys, extra, message) -> None:
    out = tmp_path / "map.png"
    assert main(["pause-map", str(data_dir / DEEPLESION), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_pause_map_slice_of_a_2d_image(data_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["pause-map", str(data_dir / "xray_lung/cxr/CHNCXR_0001_0.png"), "--slice", "0",
                 "--out", str(tmp_path / "map.png")]) == 2
    assert "2D image" in capsys.readouterr().err


def test_air_pauses_before_edges_on_ct(ct_slice: np.ndarray, heads, litemedsam_checkpoint) -> None:
    """A radiologist's sanity check: air around the patient is settled at once, strong intensity edges
    (skin, bone and organ borders) are not."""
    encoder = paused_encoder(load_model("litemedsam", weights=litemedsam_checkpoint), "litemedsam", 0.5, heads=heads)
    frame, depths = pause_depths(ct_slice, encoder)
    cell = frame.shape[0] // depths.shape[0]
    h, w = depths.shape
    grey = frame[..., 0].astype(np.float64).reshape(h, cell, w, cell).mean(axis=(1, 3)) / 255  # the token grid
    edges = np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1))
    air = grey < 0.02
    strong = edges >= np.quantile(edges, 0.9)
    assert air.sum() > 200 and strong.sum() > 200  # the slice has both: the body outline sits in air
    first = depths == heads.depths[0]
    assert first[air].mean() > first[strong].mean()


def test_accuracy_means_from_a_real_eval(eval_report: Path) -> None:
    report = json.loads(eval_report.read_text(encoding="utf-8"))
    acc = accuracy(report)
    assert sorted(acc) == ["0", "1"]
    for key, pause in (("0", 0.0), ("1", 1.0)):
        cases = [c for c in report["cases"] if c["pause"] == pause and c["error"] is None and c["dataset"] in REFERENCE]
        per_dataset = [np.mean([c["dsc"] for c in cases if c["dataset"] == d]) for d in ("xray_lung", "xray_lung_cc")]
        assert acc[key]["n_targets"] == len(cases) == 6
        assert acc[key]["dsc_targets"] == pytest.approx(np.mean([c["dsc"] for c in cases]))
        assert acc[key]["nsd_targets"] == pytest.approx(np.mean([c["nsd"] for c in cases]))
        assert acc[key]["dsc_datasets"] == pytest.approx(np.mean(per_dataset))
    assert acc["0"]["dsc_datasets"] != pytest.approx(acc["0"]["dsc_targets"], abs=1e-6)
    delta = acc["1"]["delta_points"]
    assert delta["dsc_targets"] == pytest.approx(100 * (acc["1"]["dsc_targets"] - acc["0"]["dsc_targets"]))
    assert acc["0"]["delta_points"] == {k: 0.0 for k in delta}
    assert acc["0"]["dsc_datasets"] > 0.9  # lungs on chest X-rays: the plain model is near the reference 0.95
    rows = acc["1"]["datasets"]
    for name in ("xray_lung", "xray_lung_cc"):
        assert rows[name]["delta_dsc_points"] == pytest.approx(100 * (rows[name]["dsc"] - acc["0"]["datasets"][name]["dsc"]))
    worst = min(rows, key=lambda n: rows[n]["delta_dsc_points"])
    assert acc["1"]["worst"]["dataset"] == worst
    assert acc["1"]["worst"]["delta_dsc_points"] == rows[worst]["delta_dsc_points"]


def test_pause_curve_writes_table_json_and_plot(eval_report: Path, manifest_path: Path, tmp_path: Path, capsys) -> None:
    prefix = tmp_path / "pause" / "litemedsam"
    code = main(["pause-curve", "--eval", str(eval_report), "--pause", "0.5,1", "--repeats", "1", "--slices", "1",
                 "--manifest", str(manifest_path), "--out", str(prefix), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    md, js, png = (prefix.with_name("litemedsam" + ext) for ext in (".md", ".json", ".png"))
    assert md.read_text(encoding="utf-8").strip() in printed and str(png) in printed
    lines = md.read_text(encoding="utf-8").splitlines()
    rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0].strip("| ") for r in rows[1:5]] == ["0", NO_PAUSING, "0.5", "1"]
    plain, fast, half, full = rows[1:5]
    assert "+0.00 / +0.00" in plain
    assert fast.count("–") == 5 and half.count("–") == 5  # speed only / not in the eval: no accuracy
    report = json.loads(js.read_text(encoding="utf-8"))
    assert report["missing_accuracy"] == ["0.5"]
    by_pause = {r["pause"]: r for r in report["rows"]}
    assert by_pause["0.5"]["accuracy"] is None and "not in the eval report" in by_pause["0.5"]["note"]
    # the base is the fastest unpaused variant of the run: pausing's own speed-up, the plain one beside it
    base = min(by_pause["0"]["encoder_ms"], by_pause[NO_PAUSING]["encoder_ms"])
    assert max(by_pause["0"]["speedup"], by_pause[NO_PAUSING]["speedup"]) == 1.0
    assert by_pause["1"]["speedup"] == pytest.approx(base / by_pause["1"]["encoder_ms"])
    assert by_pause["1"]["speedup_vs_plain"] == pytest.approx(by_pause["0"]["encoder_ms"] / by_pause["1"]["encoder_ms"])
    evaluation_folders = {n.split("/")[0] for n in committed_split()["evaluation"]}
    assert len(report["speed"]["slices"]) == 1 and set(report["speed"]["slices"]) <= evaluation_folders
    worst = report["accuracy"]["1"]["worst"]
    assert f"{worst['dataset']} {worst['delta_dsc_points']:+.2f}" in full
    per_dataset = [line for line in rows if line.startswith("| xray_lung")]
    assert len(per_dataset) == 2 and all(line.count(" / ") == 1 for line in per_dataset)
    assert any(line.startswith("goal 1.8x") for line in lines) and any(line.startswith("goal 2.5x") for line in lines)
    assert 0.0 < by_pause["0.5"]["paused_fraction"] < by_pause["1"]["paused_fraction"]  # the knob pauses more
    assert by_pause["1"]["accuracy"]["delta_points"]["dsc_datasets"] == pytest.approx(
        report["accuracy"]["1"]["delta_points"]["dsc_datasets"])
    assert f"{by_pause['1']['accuracy']['delta_points']['dsc_datasets']:+.2f}" in full
    plot = np.asarray(PILImage.open(png).convert("RGB"))
    assert plot.shape == (660, 1100, 3)
    colours = {tuple(c) for c in np.unique(plot.reshape(-1, 3), axis=0)}
    assert {(31, 119, 180), (255, 127, 14), (223, 240, 216)} <= colours  # DSC and NSD means, goal region
    assert {dataset_colour(0), dataset_colour(1)} <= colours  # one line per dataset


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("no_plain", "no pause 0"),
    ("bad_knob", "[0, 1]"),
    ("not_eval", "not a box-protocol"),
    ("not_split", "not run on the evaluation split"),
])
def test_pause_curve_bad_input(eval_report: Path, tmp_path: Path, capsys, case: str, message: str) -> None:
    report = json.loads(eval_report.read_text(encoding="utf-8"))
    path, pauses = eval_report, "0.5"
    if case == "missing":
        path = tmp_path / "absent.json"
    elif case == "no_plain":
        del report["summary"]["0.0"]
        path = tmp_path / "no_plain.json"
        path.write_text(json.dumps(report), encoding="utf-8")
    elif case == "bad_knob":
        pauses = "0.5,1.5"
    elif case == "not_split":
        report["split"] = None
        path = tmp_path / "all_images.json"
        path.write_text(json.dumps(report), encoding="utf-8")
    else:
        path = tmp_path / "cases_only.json"
        path.write_text(json.dumps({"cases": report["cases"]}), encoding="utf-8")
    prefix = tmp_path / "out" / "curve"
    assert main(["pause-curve", "--eval", str(path), "--pause", pauses, "--out", str(prefix), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not prefix.parent.exists()


def test_accuracy_needs_pause_zero(eval_report: Path) -> None:
    report = json.loads(eval_report.read_text(encoding="utf-8"))
    del report["summary"]["0.0"]
    with pytest.raises(FastMedSAMError, match="no pause 0"):
        accuracy(report)


def test_several_eval_reports_merge_by_dataset(eval_report: Path, tmp_path: Path) -> None:
    """A capped 3D eval beside a 2D one: their datasets merge; the same dataset in two reports is refused."""
    from FastMedSAMLib.pause.report import load_eval

    report = json.loads(eval_report.read_text(encoding="utf-8"))
    parts = []
    for name in ("xray_lung", "xray_lung_cc"):
        part = json.loads(json.dumps(report))
        for summary in part["summary"].values():
            summary["datasets"] = {k: v for k, v in summary["datasets"].items() if k == name}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(part), encoding="utf-8")
        parts.append(path)
    merged = accuracy(load_eval(parts))
    whole = accuracy(report)
    assert merged["1"]["dsc_datasets"] == pytest.approx(whole["1"]["dsc_datasets"])
    assert merged["1"]["worst"] == whole["1"]["worst"]
    with pytest.raises(FastMedSAMError, match="another report also has"):
        load_eval([parts[0], parts[0]])
