#!/usr/bin/env bash
# The main job on embedded defaults (SQLite, a folder broker, a local worker, MiniLM-L6):
# start `kilotask serve`, upload SST-2, train a SAID d=1000 task through the REST API, download
# the task file and predict the dev set with it in a new process.
set -euo pipefail
cd "$(dirname "$0")/.."
GLUE=${GLUE_DIR:-../shared/data/glue}
STEPS=${STEPS:-300}
PORT=${PORT:-8000}
export KILOTASK_DATA_DIR=${KILOTASK_DATA_DIR:-$PWD/runs/embedded}
mkdir -p runs "$KILOTASK_DATA_DIR"
API=http://127.0.0.1:$PORT
json() { .venv/bin/python -c "import json,sys; print(json.load(sys.stdin)$1)"; }

.venv/bin/kilotask serve --port "$PORT" > runs/serve.log 2>&1 &
SERVER=$!
trap 'status=$?; kill $SERVER 2>/dev/null; sleep 2; exit $status' EXIT
for _ in $(seq 60); do curl -sf "$API/healthz" >/dev/null && break; sleep 1; done
KEY=$(cat "$KILOTASK_DATA_DIR/api_key")
AUTH="Authorization: Bearer $KEY"

TRAIN=$(curl -sf -H "$AUTH" -F "file=@$GLUE/SST-2/train.tsv" "$API/v1/datasets" | json "['id']")
DEV=$(curl -sf -H "$AUTH" -F "file=@$GLUE/SST-2/dev.tsv" "$API/v1/datasets" | json "['id']")
JOB=$(curl -sf -H "$AUTH" -H "Content-Type: application/json" -H "Idempotency-Key: demo-$STEPS" \
  -d "{\"train_dataset\": \"$TRAIN\", \"eval_dataset\": \"$DEV\", \"method\": \"said\", \"dim\": 1000,
       \"hyperparameters\": {\"max_steps\": $STEPS, \"eval_every\": 100, \"max_length\": 64}}" \
  "$API/v1/jobs" | json "['id']")
echo "job $JOB queued"
while true; do
  STATE=$(curl -sf -H "$AUTH" "$API/v1/jobs/$JOB")
  STATUS=$(echo "$STATE" | json "['status']")
  echo "  $STATUS $(echo "$STATE" | json "['progress']") $(echo "$STATE" | json "['metrics']")"
  case $STATUS in succeeded) break ;; failed|cancelled) echo "$STATE"; exit 1 ;; esac
  sleep 10
done
TASK=$(echo "$STATE" | json "['task_id']")
curl -sf -H "$AUTH" -o runs/sst2-said-1000.safetensors "$API/v1/tasks/$TASK/vector"
.venv/bin/kilotask inspect runs/sst2-said-1000.safetensors
.venv/bin/kilotask predict runs/sst2-said-1000.safetensors --input "$GLUE/SST-2/dev.tsv" \
  --label-column label | tail -n 1
