#!/usr/bin/env bash
# The GPU checks and figures in one run, for a lent CUDA machine that reaches no package registry: the CUDA tests,
# the networks alone per precision (bench --forward), the Session bench per runtime and pause, and every runtime's
# agreement with torch-exact. Reads FASTMEDSAM_SHARED (data/ + parity/) and FASTMEDSAM_CACHE (the LiteMedSAM
# weights, verified); writes reports into $OUT (default gpu-out/). Usage: OUT=dir bash Testing/gpu/run_checks.sh
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 FASTMEDSAM_OFFLINE=1
manifest="$FASTMEDSAM_SHARED/data/manifest.json"
cli=(python3 -m FastMedSAMLib.cli)

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } 2>&1 | tee "$out/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider Testing/Python/test_cuda.py 2>&1 | tail -30 \
  | tee "$out/test_cuda.txt"
timeout 90 "${cli[@]}" bench --forward --device cuda --repeats 30 --manifest "$manifest" --out "$out/forward.json" \
  --models litemedsam,fastsam3d,sam-med3d-turbo,medficientsam-l0,medficientsam-l1,medficientsam-l2 2>&1 \
  | tee "$out/forward.md"
timeout 200 "${cli[@]}" bench --device cuda --runtimes torch-exact,torch,torch-bf16,torch-fp16 --pause 0,0.5 --repeats 5 --quiet \
  --manifest "$manifest" --out "$out/bench.json" --chart "$out/bench.png" 2>&1 | tee "$out/bench.md"
timeout 80 "${cli[@]}" bench --agreement --device cuda --runtimes torch,torch-bf16,torch-fp16 --manifest "$manifest" \
  --out "$out/agreement.json" 2>&1 | tee "$out/agreement.md"
