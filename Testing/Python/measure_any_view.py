"""Any-view Dice table: LiteMedSAM on the left atrium of the LA MR volumes (made oblique, anisotropic and put under
a rotated parent transform), prompted through the Slicer module's Logic in the Red, Yellow, Green and an oblique
view: a 2D box (GT box of the atrium's middle plane in that view) and a 3D box (GT box over every plane the atrium
reaches along the view's normal, propagated middle-out). Dice against the ground truth on the planes prompted.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python Testing/Python/measure_any_view.py --out any_view.json --png yellow.png
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slicer_headless import start_headless_slicer  # noqa: E402

from FastMedSAMLib.evaluation.metrics import dice  # noqa: E402
from FastMedSAMLogicLib import FastMedSAMLogic  # noqa: E402
from FastMedSAMSelfTest import views  # noqa: E402
from FastMedSAMSelfTest.scenario import find_data_dir, segment_array  # noqa: E402

CASES = ("mr_la_heart/LA_06SR5RBREL16DQ6M8LWS", "mr_la_heart/LA_0RZDK210BSMWAA6467LU")


class Context:
    def __init__(self, headless) -> None:
        self.scene = headless.scene
        self.volumes_logic = headless.volumes_logic
        self.segmentations_logic = headless.segmentations_logic
        self.logic = FastMedSAMLogic(headless.scene)


def measure(ctx: Context, case: str, png: Path = None) -> dict:
    heart = views.load_heart_scene(ctx.scene, ctx.volumes_logic, find_data_dir(), case)
    rows = {}
    for view in views.VIEWS:
        prompt = views.gt_prompt(ctx, heart, view, slab=None)
        segmentation = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{view}")
        segmentation.CreateDefaultDisplayNodes()
        two = segmentation.GetSegmentation().AddEmptySegment("", "2D")
        three = segmentation.GetSegmentation().AddEmptySegment("", "3D")
        flat = views.roi_in_view(ctx.scene, heart, prompt, True, "2D box")
        deep = views.roi_in_view(ctx.scene, heart, prompt, False, "3D box")
        start = time.perf_counter()
        ctx.logic.segment_slice(heart.volume, [flat], segmentation, two, None, model="litemedsam", device="cpu",
                                sliceToRAS=prompt.slice_to_ras)
        ms_2d = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        result = ctx.logic.segment_box(heart.volume, deep, segmentation, three, model="litemedsam", device="cpu",
                                       sliceToRAS=prompt.slice_to_ras)
        ms_3d = (time.perf_counter() - start) * 1000
        ctx.logic.accept()
        written_2d = segment_array(ctx.scene, ctx.segmentations_logic, segmentation, two, heart.volume)
        written_3d = segment_array(ctx.scene, ctx.segmentations_logic, segmentation, three, heart.volume)
        middle, box = prompt.plane_box.z, prompt.box
        plane, slab = views.covered(prompt.frame, middle, middle), views.covered(prompt.frame, box.z0, box.z1)
        truth = heart.label > 0
        rows[view] = {"dice_2d": round(dice(written_2d[plane], truth[plane]), 4),
                      "dice_3d": round(dice(written_3d[slab], truth[slab]), 4),
                      "planes_3d": box.z1 - box.z0 + 1, "encoder_calls_3d": result.prediction.encoder_calls,
                      "frame_shape": list(prompt.frame.shape), "aligned": prompt.frame.aligned,
                      "ms_2d": round(ms_2d), "ms_3d": round(ms_3d)}
        print(case, view, rows[view], flush=True)
        if png is not None and view == "Yellow":
            draw(png, prompt, heart, written_2d)
        for node in (flat, deep, segmentation):
            ctx.scene.RemoveNode(node)
    for node in (heart.volume, heart.transform):
        ctx.scene.RemoveNode(node)
    return rows


def draw(path: Path, prompt, heart, written_2d: np.ndarray) -> None:
    """The sagittal (Yellow) plane the box was drawn on, the box (yellow) and the mask written there (red)."""
    from PIL import Image, ImageDraw
    from slicer import util

    frame, box = prompt.frame, prompt.plane_box
    plane = frame.image(np.array(util.arrayFromVolume(heart.volume)))[box.z].astype(float)
    lo, hi = np.percentile(plane[plane > 0], (0.5, 99.5))
    grey = (np.clip((plane - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    mask = frame.image(written_2d.astype(np.uint8))[box.z] > 0
    rgb = np.stack([grey] * 3, axis=-1)
    rgb[mask] = (0.5 * rgb[mask] + 0.5 * np.array([230, 40, 40])).astype(np.uint8)
    steps = np.linalg.norm((heart.ijk_to_world() @ frame.index_to_ijk)[:3, :2], axis=0)  # mm per column / row
    image = Image.fromarray(rgb)
    scale = 3
    size = (int(round(rgb.shape[1] * steps[0] / min(steps) * scale)), int(round(rgb.shape[0] * steps[1] / min(steps) * scale)))
    image = image.resize(size, Image.NEAREST)
    sx, sy = size[0] / rgb.shape[1], size[1] / rgb.shape[0]
    ImageDraw.Draw(image).rectangle([box.x0 * sx, box.y0 * sy, (box.x1 + 1) * sx, (box.y1 + 1) * sy],
                                    outline=(255, 220, 0), width=2)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--png", type=Path, help="the Yellow (sagittal) box and mask of the first case")
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    args = parser.parse_args()
    headless = start_headless_slicer()
    ctx = Context(headless)
    table = {case: measure(ctx, case, args.png if i == 0 else None) for i, case in enumerate(args.cases)}
    args.out.write_text(json.dumps(table, indent=2))
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
