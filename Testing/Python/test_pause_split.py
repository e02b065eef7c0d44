"""Token pausing on held-apart images: the recorded train / calibration / evaluation split, the knob calibrated on
real paused forwards, and the knob's meaning on images neither the heads nor the knob saw."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from FastMedSAMLib.evaluation.box_protocol import REFERENCE
from FastMedSAMLib.io.manifest import read_manifest
from FastMedSAMLib.models import load_model
from FastMedSAMLib.pause import load_pause_heads
from FastMedSAMLib.pause.calibrate import fit_table, realised, split_slices, to_tensors
from FastMedSAMLib.pause.split import SAME_SCAN, check_disjoint, committed_split, make_split, trained_images
from FastMedSAMLib.pause.tinyvit_paused import PausedTinyViT

KNOBS = (0.1, 0.25, 0.5, 0.75, 1.0)


@pytest.fixture(scope="module")
def heads():
    return load_pause_heads("litemedsam")


@pytest.fixture(scope="module")
def split():
    return committed_split()


def test_committed_split_is_the_rule_applied_to_the_heads_training_record(split, heads, manifest_path: Path) -> None:
    assert make_split(manifest_path, trained_images(heads.meta["slice_sources"])) == split
    check_disjoint(split)
    # every image a training slice came from is on the training side, never calibrated or evaluated on
    assert trained_images(heads.meta["slice_sources"]) == set(split["training"])


def test_split_by_scan_and_every_evaluated_dataset_keeps_images(split, manifest_path: Path) -> None:
    entries = read_manifest(manifest_path)
    side = {name: role for role, names in split.items() for name in names}
    for copy, scan in SAME_SCAN.items():  # two rows of one scan never sit on different sides
        if copy in side and scan in side:
            assert side[copy] == side[scan]
    for role in ("calibration", "evaluation"):
        for name in split[role]:
            entry = next(e for e in entries if e.image_name == name)
            assert any(d in REFERENCE for d in entry.datasets), name
    folders = {n.split("/")[0] for n in split["evaluation"]}
    # the 2D reference datasets are all evaluated; the ones with several images also calibrate
    assert {"ct_2d_btcv_imis", "micro_em_isbi2012", "xray_lung", "endo_kvasir", "derm_ham10000", "us_hc18",
            "micro_dsb2018_stardist", "path_tcga_gbm_nuclei", "ct_mr_2d_samm2d_demo"} <= folders
    calibrated = {n.split("/")[0] for n in split["calibration"]}
    assert {"ct_2d_btcv_imis", "micro_em_isbi2012", "xray_lung", "endo_kvasir"} <= calibrated
    assert len(split["evaluation"]) > len(split["calibration"])


def test_fit_table_inverts_a_measured_curve() -> None:
    thresholds = np.array([-2.0, -1.0, 0.0, 1.0])
    fractions = np.array([0.0, 0.2, 0.18, 1.0])  # measured curves wiggle: made monotone first
    table = fit_table(thresholds, fractions, 11)
    assert table[0] == -2.0 and table[-1] == 1.0
    assert np.all(np.diff(table) >= 0)
    assert table[1] == pytest.approx(-1.5)  # 0.1: half way from 0 to 0.2
    assert table[5] == pytest.approx(0.0 + (0.5 - 0.2) / 0.8)  # 0.5 on the last segment


def test_knob_monotone_in_paused_work_on_unseen_images(split, heads, manifest_path: Path,
                                                       litemedsam_checkpoint) -> None:
    """On real evaluation images (never seen by the heads nor the knob): more knob, more tokens paused, on every
    image, and pause 1 pauses everything."""
    net = load_model("litemedsam", weights=litemedsam_checkpoint)
    names = [n for n in split["evaluation"] if n.split("/")[0] in ("ct_2d_btcv_imis", "xray_lung", "endo_kvasir")]
    slices = split_slices(manifest_path, names)
    runner = PausedTinyViT(net.image_encoder, heads.catchup).eval()
    fractions = realised(runner, heads, [heads.threshold(p) for p in KNOBS], to_tensors(slices))
    assert np.all(np.diff(fractions, axis=0) > 0), fractions  # strictly more paused per image as the knob grows
    assert np.all(fractions[-1] > 0.99)  # pause 1: everything
