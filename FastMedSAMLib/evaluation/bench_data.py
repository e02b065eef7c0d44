"""The real data every bench workload runs on: DeepLesion CT volumes of the manifest, one lesion slice of the
first and two boxes on it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple, Union

from ..errors import FastMedSAMError
from ..io.images import Image
from ..io.manifest import load_image, load_label, read_manifest, tight_box
from ..prompts import Box, Box3D

BENCH_DATASET = "ct_deeplesion_medsam2"  # CVPR24 npz volumes, 13-16 slices of 512x512, as stored
SECOND_BOX_MARGIN = 12  # px added around the lesion box for the cached click's second box


@dataclass
class BenchData:
    slice_image: Image  # one 512x512 CT slice (2D)
    boxes: Tuple[Box, Box]  # the lesion's tight box on that slice, then a larger second box
    volumes: List[Tuple[str, Image, Box3D]]  # (name, volume, lesion 3D box)


def load_bench_data(manifest: Union[str, Path]) -> BenchData:
    """The DeepLesion npz volumes of the manifest and the middle lesion slice of the first one."""
    entries = [e for e in read_manifest(manifest) if e.datasets == (BENCH_DATASET,)]
    if not entries:
        raise FastMedSAMError(f"the manifest {manifest} has no {BENCH_DATASET} volumes to benchmark on")
    volumes = []
    for entry in entries:
        image, label = load_image(entry), load_label(entry) > 0
        volumes.append((Path(entry.image_name).stem, image, tight_box(label)))
    name, volume, box3d = volumes[0]
    z = int((box3d.z1 - box3d.z0) / 2 + box3d.z0)
    first = box3d.slice_box(z)
    height, width = volume.array.shape[1:]
    m = SECOND_BOX_MARGIN
    second = Box(max(first.x0 - m, 0), max(first.y0 - m, 0), min(first.x1 + m, width - 1), min(first.y1 + m, height - 1))
    return BenchData(Image.from_array(volume.array[z]), (Box(first.x0, first.y0, first.x1, first.y1), second), volumes)


# -- box-prompt 2D workload ----------------------------------------------------------------------------------------
