#!/usr/bin/env bash
# Accuracy sweep for lowrank against SAID at d = 1000 (docs/INTRINSIC_DIMENSION.md, issue 11).
# Usage: bench/lowrank_sweep.sh sst2|mrpc OUT_DIR [extra kilotask train flags]
# Prints one JSON line per run (the flags, then kilotask train's summary) to OUT_DIR/runs.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=$1; OUT=$2; shift 2
G=${GLUE_DIR:-../shared/data/glue}
mkdir -p "$OUT"
case $TASK in
  sst2) DATA="--train $G/SST-2/train.tsv --eval $G/SST-2/dev.tsv --max-steps 100 --batch-size 32 --max-length 64" ;;
  mrpc) DATA="--train $G/MRPC/train.tsv --eval $G/MRPC/dev.tsv --max-steps 460 --batch-size 16 --max-length 128" ;;
  *) echo "unknown task $TASK" >&2; exit 2 ;;
esac
run() {  # run NAME FLAGS...
  local name=$1; shift
  local line
  line=$(.venv/bin/kilotask train --model minilm-l6 $DATA --dim 1000 --quiet "$@" \
    --out "$OUT/$name.safetensors")
  echo "{\"run\": \"$name\", \"flags\": \"$*\", \"result\": $line}" | tee -a "$OUT/runs.jsonl"
}
while read -r name flags; do
  [ -n "$name" ] && run "$name" $flags
done
