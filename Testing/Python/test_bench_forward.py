"""`fastmedsam bench --forward`: the networks alone, per encoder precision, on the CPU here (the GPU run adds the
CUDA-graph decode): every figure is there, float32 is its own reference, a half-precision encoder is measured
against it, and the 3D model runs on its parity-recipe weights when its official ones are not cached."""
from __future__ import annotations

from FastMedSAMLib.evaluation.bench_forward import bench_forward, markdown


def test_forward_bench_reports_each_model_and_precision(litemedsam_checkpoint, parity_dir):
    report = bench_forward(["litemedsam", "fastsam3d"], device="cpu", precisions=("float32", "bfloat16"), repeats=1,
                           warmups=0, batch=2, parity_dir=parity_dir)
    rows = {(r["model"], r["precision"]): r for r in report["rows"]}
    assert set(rows) == {(m, p) for m in ("litemedsam", "fastsam3d") for p in ("float32", "bfloat16")}
    lite, crop = rows[("litemedsam", "float32")], rows[("fastsam3d", "float32")]
    assert lite["weights"] == "official" and crop["weights"].startswith("recipe")
    assert lite["input"] == [1, 3, 256, 256] and crop["input"] == [1, 1, 128, 128, 128]
    for row in (lite, crop):
        assert row["embedding_rel_error"] == 0.0 and row["mask_agreement"] == 1.0
        assert row["encode_ms"] > 0 and row["decode_ms"] > 0
        assert row["encode_decode_ms"] == row["encode_ms"] + row["decode_ms"]
    assert lite["encode_ms_per_slice_in_batch"] > 0 and "encode_ms_per_slice_in_batch" not in crop
    half = rows[("litemedsam", "bfloat16")]
    assert 0.0 < half["embedding_rel_error"] < 0.1 and half["mask_agreement"] > 0.99
    assert "decode_cuda_graph_ms" not in lite  # a GPU figure
    table = markdown(report)
    assert "| litemedsam | official | bfloat16 |" in table and "| fastsam3d | recipe (gain) | float32 |" in table
