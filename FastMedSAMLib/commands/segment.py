"""`fastmedsam segment IMAGE --box … | --box3d … [--space ijk|lps|ras] --out mask.nii.gz|x.seg.nrrd`"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .arguments import add_crop, add_device, add_pause, add_runtime


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment an image from a box prompt and write the mask",
        description=(
            "Segment IMAGE from a 2D box on one slice or a 3D box (propagated slice by slice) and write the mask "
            "with the image's geometry. In ijk space --box is 'x0 y0 x1 y1 [k]' and --box3d 'x0 y0 z0 x1 y1 z1' "
            "(voxel indices, inclusive); in lps/ras space both take two opposite corners 'x y z x y z' in mm."
        ),
    )
    p.add_argument("image", help="NIfTI, NRRD, MHA, DICOM folder/file, PNG, JPG, TIFF or CVPR24 .npz")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--box", type=float, nargs="+", metavar="V", help="2D box on one slice")
    prompt.add_argument("--box3d", type=float, nargs=6, metavar="V", help="3D box, propagated middle-out")
    p.add_argument("--space", choices=("ijk", "lps", "ras"), default="ijk", help="coordinates of the box (default ijk)")
    p.add_argument("--out", required=True, help="output mask: .nii.gz, .nii, .nrrd, .mha or .seg.nrrd")
    add_model_arguments(p)
    p.set_defaults(func=run)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="registry model name (default: the registry's default, litemedsam)")
    add_device(p)
    p.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"), help="intensity window (CT default -160 240)")
    p.add_argument("--name", default="segment", help="segment name written into .seg.nrrd")
    add_pause(p)
    add_runtime(p)
    add_crop(p)


def parse_box(image, values: Sequence[float], space: str, three_d: bool):
    """The CLI's box numbers -> a voxel-index Box / Box3D (world corners are converted exactly)."""
    from ..errors import PromptError
    from ..io.geometry import world_box_to_index
    from ..prompts import Box, Box3D

    if space != "ijk":
        if len(values) != 6:
            raise PromptError(f"a box in {space} space takes two corners 'x y z x y z' (6 numbers), got {len(values)}")
        box3d = world_box_to_index(image, values[:3], values[3:], space=space)
        if three_d:
            return box3d
        if box3d.z0 != box3d.z1:
            raise PromptError(f"the 2D box corners lie on different slices ({box3d.z0} and {box3d.z1}); use --box3d")
        return box3d.slice_box(box3d.z0)
    if three_d:
        return Box3D(*values)
    if len(values) not in (4, 5):
        raise PromptError(f"--box in ijk space takes 'x0 y0 x1 y1 [k]' (4 or 5 numbers), got {len(values)}")
    z = None if len(values) == 4 else int(values[4])
    return Box(*values[:4], z=z)


def full_mask(session, prediction):
    """The prediction as a mask over the whole image (a 2D result on a volume goes into its slice)."""
    import numpy as np

    if prediction.slice_index is None:
        return prediction.mask
    volume = np.zeros(session.image.array.shape[:3], dtype=bool)
    volume[prediction.slice_index] = prediction.mask
    return volume


def report(session, prediction, mask, out: Optional[str]) -> None:
    import numpy as np

    voxels = int(mask.sum())
    size = voxels * float(np.prod(session.image.spacing[: mask.ndim]))
    unit = "mm^3" if mask.ndim == 3 else "mm^2"
    print(f"model       {session.model_name} on {session.device}")
    print(f"mask        {voxels} {'voxels' if mask.ndim == 3 else 'pixels'}, {size:.1f} {unit}, predicted IoU {prediction.iou:.3f}")
    if voxels:
        nz = np.nonzero(mask)
        extent = ", ".join(f"{int(a.min())}..{int(a.max())}" for a in nz)
        print(f"extent      index ({'z, y, x' if mask.ndim == 3 else 'y, x'}) {extent}")
    print(f"encoder     {prediction.encoder_calls} call(s)")
    if session.pause:
        print(f"pausing     knob {session.pause:g}: {prediction.paused_fraction:.0%} of block-tokens paused")
    print("timings ms  " + "  ".join(f"{k} {v:.1f}" for k, v in prediction.timings.items()))
    if out:
        print(f"wrote       {out}")


def run(args: argparse.Namespace) -> int:
    from ..io.images import read_image, write_mask
    from ..session import Session
    from ..weights.registry import default_model

    image = read_image(args.image)
    session = Session(model=args.model or default_model(), device=args.device, pause=args.pause, runtime=args.runtime,
                      crop=args.crop)
    session.set_image(image, window=tuple(args.window) if args.window else None)
    box = parse_box(image, args.box or args.box3d, args.space, three_d=args.box3d is not None)
    prediction = session.predict(box=box)
    mask = full_mask(session, prediction)
    write_mask(mask, image, args.out, segment_names=[args.name])
    report(session, prediction, mask, args.out)
    return 0
