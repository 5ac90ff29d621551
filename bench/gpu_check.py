"""Device check: a task trained on CPU, rebuilt on CUDA, must predict the same labels.

Usage (on the GPU machine):
  python3 bench/gpu_check.py --base BASE_DIR --task TASK --input ROWS.tsv --cpu-preds PREDS.json
Prints a JSON report: label agreement, largest score difference, accuracy on both devices, and
a short bf16 training run on CUDA to exercise the GPU training path.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from app.engine.artifact import TaskArtifact  # noqa: E402
from app.engine.data import LabelledText, read_table  # noqa: E402
from app.engine.pipeline import TrainRequest, columns_of, predict_task, train_task  # noqa: E402
from app.engine.trainer import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--cpu-preds", required=True)
    ap.add_argument("--out")
    args = ap.parse_args()

    task = TaskArtifact.load(args.task)
    data = read_table(args.input, columns_of(task), require_labels=False)
    cpu = json.loads(Path(args.cpu_preds).read_text())
    t = time.perf_counter()
    gpu = predict_task(task, data, model=args.base, device="cuda")
    rebuild_s = time.perf_counter() - t
    same = sum(a == b for a, b in zip(gpu.labels, cpu["labels"], strict=True))
    max_diff = max(
        abs(x - y)
        for g, c in zip(gpu.scores, cpu["scores"], strict=True)
        for x, y in zip(g, c, strict=True)
    )
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "rows": len(gpu.labels),
        "same_labels": same,
        "max_score_diff": max_diff,
        "rebuild_and_predict_s": rebuild_s,
    }

    rows = read_table(args.input)
    half = len(rows.texts) * 2 // 3

    def part(lo: int, hi: int) -> LabelledText:
        return LabelledText(
            rows.texts[lo:hi], None, rows.labels[lo:hi], rows.columns, rows.all_columns
        )

    config = TrainConfig(method="said", max_steps=40, learning_rate=0.1, eval_every=20)
    t = time.perf_counter()
    out = train_task(
        TrainRequest(
            args.base, part(0, half), part(half, len(rows.texts)), 1000, 0, 64, config=config
        ),
        device="cuda",
    )
    report["cuda_bf16_train_40_steps_s"] = time.perf_counter() - t
    report["cuda_train_history"] = out.history
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    assert same == len(gpu.labels), "CPU and CUDA predictions differ"


if __name__ == "__main__":
    main()
