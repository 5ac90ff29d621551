#!/usr/bin/env bash
# The main job on embedded defaults: train a SAID d=1000 task on SST-2 (CPU, a few hundred
# steps), save it as a sub-kilobyte-scale file, then predict the dev set in a new process.
set -euo pipefail
cd "$(dirname "$0")/.."
GLUE=${GLUE_DIR:-../shared/data/glue}
STEPS=${STEPS:-300}
OUT=${OUT:-runs/sst2-said-1000.safetensors}
mkdir -p "$(dirname "$OUT")"
.venv/bin/kilotask train --model minilm-l6 --train "$GLUE/SST-2/train.tsv" \
  --eval "$GLUE/SST-2/dev.tsv" --method said --dim 1000 --max-steps "$STEPS" \
  --eval-every 100 --max-length 64 --out "$OUT"
.venv/bin/kilotask inspect "$OUT"
.venv/bin/kilotask predict "$OUT" --input "$GLUE/SST-2/dev.tsv" --label-column label | tail -n 1
