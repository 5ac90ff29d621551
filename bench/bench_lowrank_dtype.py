"""Float16 lowrank factors at rest against float32 (issue 25): one lowrank task trained briefly
on each of SST-2, MRPC, CoLA and STS-B (MiniLM-L6, d = 1000, the default recipe), then every
dev row scored through the server's code (LowRankPool + classify_mixed, batches of 32) with the
factors kept in float32 and in float16. Reports label agreement and the largest difference in
probability (STS-B: in the predicted score), and each task's resident bytes.

    .venv/bin/python bench/bench_lowrank_dtype.py --steps 60 --json dtype.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_accuracy import TASKS, load  # bench/ is on the path

from app.engine.pipeline import TrainRequest, train_task
from app.engine.trainer import TrainConfig
from app.serving.cache import TaskCache
from app.serving.lowrank_pool import LowRankPool, classify_mixed


def scores(pool: LowRankPool, task, dev) -> torch.Tensor:
    pairs = dev.text_pairs or [None] * len(dev.texts)
    out = []
    for lo in range(0, len(dev.texts), 32):
        items = list(zip(dev.texts[lo : lo + 32], pairs[lo : lo + 32], strict=True))
        out += classify_mixed(pool, [task] * len(items), items)
    logits = torch.stack(out)
    return logits if task.space.size == 1 else logits.softmax(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--train-rows", type=int, default=4000)
    ap.add_argument("--json")
    args = ap.parse_args()
    cache = TaskCache(budget_mb=1024)
    pools = {d: LowRankPool(256, cache.base_model, dtype=d) for d in ("float32", "float16")}
    report = {}
    for name in ("sst2", "mrpc", "cola", "stsb"):
        spec = TASKS[name]
        train, dev = load(spec, args.train_rows)
        config = TrainConfig(method="lowrank", max_steps=args.steps, batch_size=32,
                             eval_every=args.steps, metric=spec.metric)  # fmt: skip
        req = TrainRequest("minilm-l6", train, dev, 1000, 0, 64, config=config,
                           task_type=spec.task_type)  # fmt: skip
        task = train_task(req).artifact
        full, half = (scores(pools[d], task, dev) for d in ("float32", "float16"))
        row = {
            "rows": len(dev.texts),
            "max_abs_difference": float((full - half).abs().max()),
            "resident_bytes": {d: pools[d].factors(task).nbytes for d in pools},
        }
        if task.space.size > 1:
            row["label_agreement"] = float((full.argmax(-1) == half.argmax(-1)).float().mean())
        report[name] = row
        print(json.dumps({name: row}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **report}, indent=1))


if __name__ == "__main__":
    main()
