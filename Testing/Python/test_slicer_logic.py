"""The Slicer module's Logic on real MRML nodes (slicer-core, no Slicer app) with the real LiteMedSAM.

The bodies live in FastMedSAM/FastMedSAMSelfTest/bodies.py and also run inside Slicer as `FastMedSAMTest`.
Measured figures go to Testing/Artifacts/slicer_logic_figures.json (and are printed with -s).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Dict

import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from slicer_headless import REPO, start_headless_slicer  # noqa: E402

from FastMedSAMLogicLib import FastMedSAMLogic  # noqa: E402
from FastMedSAMLogicLib.dependencies import install_missing, missing_requirements  # noqa: E402
from FastMedSAMLogicLib.overlay import TimingHistory, TimingRecord, format_history_row, format_overlay  # noqa: E402
from FastMedSAMSelfTest import bodies  # noqa: E402
from FastMedSAMSelfTest.scenario import load_lesion_scene  # noqa: E402

ARTIFACTS = REPO / "Testing" / "Artifacts"
FIGURES: Dict[str, object] = {}


@pytest.fixture(scope="module")
def headless():
    slicer_app = start_headless_slicer()
    yield slicer_app
    slicer_app.close()


@pytest.fixture(scope="module")
def ctx(headless, data_dir: Path, litemedsam_checkpoint: Path, tmp_path_factory):
    lesion = load_lesion_scene(headless.scene, headless.volumes_logic, data_dir)
    logic = FastMedSAMLogic(headless.scene)
    context = bodies.SelfTestContext(
        headless.scene, headless.volumes_logic, headless.segmentations_logic, lesion, logic,
        tmp_path_factory.mktemp("slicer_logic"),
    )
    yield context
    logic.cleanup()
    if FIGURES:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "slicer_logic_figures.json").write_text(json.dumps(FIGURES, indent=2, default=str))
        print("\nFastMedSAM Logic figures:", json.dumps(FIGURES, indent=2, default=str))


@pytest.mark.parametrize("name", [name for name, _ in bodies.BODIES])
def test_body(ctx, name: str) -> None:
    FIGURES[name] = dict(bodies.BODIES)[name](ctx)


def test_overlay_text_is_a_function_of_the_timings() -> None:
    record = TimingRecord("litemedsam", "cpu", "3D", {"encode": 2412.4, "decode": 31.2, "total": 2511.0},
                          {"total": 48.6}, encoder_calls=3, slices=3)
    assert format_overlay(record) == (
        "FastMedSAM litemedsam (cpu)\n"
        "encode 2412 ms (3/3 slices) | decode 31 ms | total 2511 ms\n"
        "logic 49 ms"
    )
    cached = TimingRecord("litemedsam", "cuda:0", "slice", {"encode": 0.0, "decode": 4.25, "total": 6.0},
                          {"total": 3.0}, encoder_calls=0, slices=1)
    assert format_overlay(cached).splitlines()[1] == "encode cached | decode 4.2 ms | total 6.0 ms"
    assert format_history_row(cached)[3:5] == ["off", "cached"]
    history = TimingHistory(size=2)
    for r in (record, cached, record):
        history.add(r)
    assert len(history) == 2 and history.records() == [cached, record]


def test_overlay_shows_the_pause_knob_and_the_tokens_it_paused() -> None:
    paused = TimingRecord("litemedsam", "cpu", "slice", {"encode": 310.0, "decode": 9.0, "total": 330.0},
                          {"total": 12.0}, encoder_calls=1, slices=1, pause=0.25, paused_fraction=0.3125)
    assert format_overlay(paused) == (
        "FastMedSAM litemedsam (cpu)\n"
        "encode 310 ms | decode 9.0 ms | total 330 ms\n"
        "pause 0.25 · 31% tokens paused\n"
        "logic 12 ms"
    )
    assert format_history_row(paused)[3] == "0.25 (31%)"
    note = "pause 0.25 not applied: medficientsam-l0 has no token-pause heads"
    plain = TimingRecord("medficientsam-l0", "cpu", "slice", {"encode": 90.0, "decode": 9.0, "total": 100.0},
                         {"total": 12.0}, encoder_calls=1, slices=1, pause_note=note)
    assert format_overlay(plain).splitlines()[2:] == [note, "logic 12 ms"]
    assert format_history_row(plain)[3] == "off"


def test_dependencies_present_and_main_thread_only() -> None:
    assert missing_requirements() == [], "the test environment lacks an engine dependency"

    def must_not_ask(_text: str) -> bool:
        raise AssertionError("asked to install although nothing is missing")

    assert install_missing(must_not_ask, pip_install=lambda _r: None) is True
    errors = []

    def from_worker() -> None:
        try:
            install_missing(must_not_ask, pip_install=lambda _r: None)
        except RuntimeError as error:
            errors.append(str(error))

    thread = threading.Thread(target=from_worker)
    thread.start()
    thread.join()
    assert errors and "main thread" in errors[0]


def test_panel_and_effect_share_one_logic_and_one_channel(headless) -> None:
    from FastMedSAMLogicLib import shared

    try:
        assert shared.shared_logic(headless.scene) is shared.shared_logic(headless.scene)
        channel = shared.shared_worker(headless.scene)
        assert shared.shared_worker(headless.scene) is channel
    finally:
        shared.close()
    assert shared.shared_worker(headless.scene) is not channel  # closed channels are replaced, never reused
    shared.close()


def test_shared_channel_routes_outcomes_to_their_owner() -> None:
    from FastMedSAMLogicLib.worker import PredictionWorker

    gate = threading.Event()
    worker = PredictionWorker(lambda request: gate.wait(30) and request * 2)
    try:
        worker.submit(1, owner="module-panel")  # runs, held at the gate
        worker.submit(2, owner="module-panel")  # waits, then superseded by the effect's prompt
        last = worker.submit(3, owner="segment-editor")
        gate.set()
        assert worker.wait_idle(30)
        assert worker.poll("module-panel") == []  # the panel's requests were superseded: newest prompt wins
        (outcome,) = worker.poll("segment-editor")
        assert (outcome.ticket, outcome.result, outcome.error) == (last, 6, None)
        assert worker.poll("segment-editor") == []
    finally:
        worker.close()
