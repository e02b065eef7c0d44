"""`fastmedsam bench --memory` on a real CT: a short tiled volume (the full 300 slices are the benchmark's), in a
fresh child process, reports its own peak RSS with every slice of the volume in the embedding cache."""
from __future__ import annotations

import numpy as np

from FastMedSAMLib.evaluation.bench_memory import bench_memory, memory_markdown, tiled_ct


def test_tiled_ct_repeats_the_real_slices():
    lesion = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5) - 1000
    volume = tiled_ct(lesion, 7)
    assert volume.shape == (7, 4, 5) and volume.dtype == np.int16 and volume.flags.c_contiguous
    np.testing.assert_array_equal(volume[3:6], lesion.astype(np.int16))
    np.testing.assert_array_equal(volume[6], lesion[0].astype(np.int16))


def test_memory_bench_fills_the_cache_in_its_own_process(data_dir):
    report = bench_memory(data_dir / "manifest.json", ["torch", "torch-fp16"], threads=1, depth=16)
    row, refused = report["memory"]
    assert "CUDA" in refused["note"]  # a runtime the machine cannot run is reported, the others still measured
    assert row["runtime"] == "torch" and row["shape_zyx"] == [16, 512, 512]
    assert row["cache"]["entries"] == 16  # the box's slices, then the prefetch's
    assert 0 < row["prefetched_slices"] <= 16 - row["box_slices"]
    assert row["peak_rss_mb"] >= row["after_load_mb"] > 100
    table = memory_markdown(report)
    assert "| torch | 512×512×16 int16" in table and "| torch-fp16 | skipped:" in table
