"""Side-by-side training runs on real data for the training recipe (issue 22), one JSON line
each: the task, the method and its options, the dev metrics and the seconds taken.

    .venv/bin/python bench/recipe_runs.py \\
      '{"task": "trec50", "method": "lowrank", "spec": "lowrank-v2"}' \\
      '{"task": "trec50", "method": "lowrank", "spec": "lowrank-v1"}'

Keys: task (mrpc, sst2: the budgets of bench/lowrank_sweep.sh; trec50, trec6: one epoch at
batch 32, max length 64, scored on TREC's test set), method, dim (1000), lr (null: the
method's default; "auto": the probe), and method options (spec, rank, ...). MiniLM-L6, seed 0.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.data import ColumnSpec, read_table  # noqa: E402
from app.engine.pipeline import TrainRequest, train_task  # noqa: E402
from app.engine.trainer import TrainConfig  # noqa: E402

GLUE = os.environ.get("GLUE_DIR", "../shared/data/glue")
TREC = os.environ.get("TREC_DIR", "../shared/data/trec")
# task -> (train, dev, columns, steps, batch size, max length)
DATA = {
    "mrpc": (f"{GLUE}/MRPC/train.tsv", f"{GLUE}/MRPC/dev.tsv", ColumnSpec(), 460, 16, 128),
    "sst2": (f"{GLUE}/SST-2/train.tsv", f"{GLUE}/SST-2/dev.tsv", ColumnSpec(), 100, 32, 64),
    "trec50": (f"{TREC}/train.tsv", f"{TREC}/test.tsv", ColumnSpec("question", None, "fine"),
               171, 32, 64),
    "trec6": (f"{TREC}/train.tsv", f"{TREC}/test.tsv", ColumnSpec("question", None, "coarse"),
              171, 32, 64),
}  # fmt: skip
METRICS = ("accuracy", "f1", "mcc", "pearson", "degenerate")


def run(task: str, method: str, dim: int = 1000, lr=None, **options) -> dict:
    train_path, dev_path, columns, steps, batch, max_length = DATA[task]
    train = read_table(train_path, columns)
    dev = read_table(dev_path, train.columns)
    config = TrainConfig(method=method, max_steps=steps, batch_size=batch, learning_rate=lr,
                         eval_every=steps)  # fmt: skip
    start = time.time()
    out = train_task(TrainRequest("minilm-l6", train, dev, dim, 0, max_length, config=config,
                                  options=options))  # fmt: skip
    metrics = {k: round(v, 4) for k, v in out.metrics.items() if k in METRICS}
    probe = out.probe.as_event()["losses"] if out.probe else None
    return {"task": task, "method": method, "dim": dim, "lr": lr, **options, "lr_used": out.lr,
            "lr_probe": probe, **metrics, "seconds": round(time.time() - start)}  # fmt: skip


if __name__ == "__main__":
    for spec in sys.argv[1:]:
        print(json.dumps(run(**json.loads(spec))), flush=True)
