#!/usr/bin/env bash
# Packed-student throughput on one GPU with torch alone (no Ray, Optuna, plotly or pydantic needed): aggregate
# images/s and trials/hour for 1, 2, 4 and 8 students training at once, fp32 vs bf16 + channels_last vs the
# same step replayed as a CUDA graph. Made for a bare CUDA image with torch (python 3.12); under 8 minutes.
#
#   scripts/gpu-check.sh [OUT.md]          on the GPU; the table goes to OUT.md (default gpu-check.md)
#   scripts/gpu-check.sh --tiny [OUT.md]   a tiny CPU run of the same code (what the tests run)
#
# PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [[ "${1:-}" == "--tiny" ]]; then
    shift
    settings=(--device cpu --students 2 --modes fp32,bf16-cl --seconds 0.5 --warmup-steps 2 --batch 16 --pool 256 --width 8)
else
    settings=(--device cuda --students 1,2,4,8)
fi
out=${1:-gpu-check.md}
start=$(date +%s)
# Run as a file, not as nas_kd.bench.packed: importing the nas_kd package would pull in pydantic and torchvision.
timeout 470 "$python" nas_kd/bench/packed.py "${settings[@]}" --out "$out"
echo "gpu-check: $(($(date +%s) - start)) s in all; table in $out"
