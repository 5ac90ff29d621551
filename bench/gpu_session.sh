#!/usr/bin/env bash
# One prepared run for a lent GPU machine (its image has torch, transformers, triton, pytest;
# none of the web packages). Checks the CUDA kernels against the reference, then times the
# engine on BERT-base and RoBERTa-large shapes. Writes everything under $OUT (or ./gpu-out).
# Usage: bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONPATH=.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" | tee -a "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q tests/unit/engine/test_fastfood_triton.py \
    tests/unit/engine/test_fastfood.py tests/unit/engine/test_fwht.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
timeout 300 python3 bench/bench_engine.py --device cuda --json "$OUT/bench-engine.json" 2>&1 \
    | tail -25 | tee "$OUT/bench-engine.txt"
