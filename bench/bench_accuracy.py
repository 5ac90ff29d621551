"""Side by side on MiniLM-L6 (issue 22): full fine-tuning, kilotask SAID, DID and lowrank at
d = 200 and 1000, and PEFT's LoRA (r = 8, query/value), VeRA, FourierFT and Uni-LoRA, with the
same data order, batch, max length and steps. Per run: the best dev metric over the
evaluations, the bytes a user stores per task (classifier head included, as safetensors), the
trainable parameters and the seconds per step. One JSON line per run, and all of them in --out.

    .venv/bin/python bench/bench_accuracy.py --tasks trec50 trec6 --steps 171 --out acc.json

Fitted to a 2-core CPU: `--train-rows` caps the training rows (a seeded sample), each method
gets its own learning rates (PEFT methods: two around what their authors recommend, `--peft-lrs`;
kilotask: its default, `auto`, plus any `--kilotask-lrs`), and the dev metric is measured at
the middle and at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import save  # noqa: E402

from app.engine.base import load_base  # noqa: E402
from app.engine.data import ColumnSpec, TokenizedDataset, make_loader, read_table, split_rows  # noqa: E402
from app.engine.pipeline import TrainRequest, output_space, train_task  # noqa: E402
from app.engine.trainer import TrainConfig, _lr_lambda, predict_logits  # noqa: E402

GLUE = os.environ.get("GLUE_DIR", "../shared/data/glue")
TREC = os.environ.get("TREC_DIR", "../shared/data/trec")


@dataclass(frozen=True)
class Task:
    train: str
    dev: str
    columns: ColumnSpec
    names: list[str] | None = None  # a headerless file's columns
    task_type: str | None = None
    metric: str | None = None


TASKS = {
    "sst2": Task(f"{GLUE}/SST-2/train.tsv", f"{GLUE}/SST-2/dev.tsv", ColumnSpec()),
    "mrpc": Task(f"{GLUE}/MRPC/train.tsv", f"{GLUE}/MRPC/dev.tsv", ColumnSpec()),
    "cola": Task(f"{GLUE}/CoLA/train.tsv", f"{GLUE}/CoLA/dev.tsv", ColumnSpec(),
                 ["source", "label", "original", "sentence"], metric="mcc"),
    "stsb": Task(f"{GLUE}/STS-B/train.tsv", f"{GLUE}/STS-B/dev.tsv", ColumnSpec(),
                 task_type="regression"),
    "trec6": Task(f"{TREC}/train.tsv", f"{TREC}/test.tsv", ColumnSpec("question", None, "coarse")),
    "trec50": Task(f"{TREC}/train.tsv", f"{TREC}/test.tsv", ColumnSpec("question", None, "fine")),
}  # fmt: skip

# kilotask: its default, `auto` (the probe picks the rate); --kilotask-lrs adds fixed ones
KILOTASK = ("full", "said", "did", "lowrank")
PEFT = {
    "lora": [1e-3, 5e-3],  # LoRA r = 8 on query/value: 5e-3 won on the intent set
    "vera": [5e-3, 2e-2],  # VeRA's GLUE rates are 4e-3 to 1e-2 for its vectors
    "fourierft": [5e-2, 1e-1],  # FourierFT: 5e-2 to 1e-1 with scaling 150 on RoBERTa-base
    "unilora": [5e-3, 2e-2],
}


def peft_config(name: str):
    import peft

    common = {"task_type": "SEQ_CLS", "target_modules": ["query", "value"]}
    if name == "lora":
        return peft.LoraConfig(r=8, lora_alpha=16, **common)
    if name == "vera":
        return peft.VeraConfig(r=256, save_projection=False, **common)  # A, B: from its key
    if name == "fourierft":
        return peft.FourierFTConfig(n_frequency=1000, scaling=150.0, **common)
    if name == "unilora":
        return peft.UniLoraConfig(r=4, theta_d_length=1000, **common)
    raise ValueError(name)


def load(task: Task, train_rows: int | None):
    train = read_table(task.train, task.columns, names=task.names)
    dev = read_table(task.dev, train.columns, names=task.names)
    if train_rows and len(train.texts) > train_rows:
        _, train = split_rows(train, train_rows, 0)
    return train, dev


def run_kilotask(task: Task, train, dev, method, dim, lr, args) -> dict:
    config = TrainConfig(method=method, max_steps=args.steps, batch_size=args.batch_size,
                         learning_rate=lr, eval_every=max(1, args.steps // 2),
                         metric=task.metric)  # fmt: skip
    req = TrainRequest("minilm-l6", train, dev, dim, 0, args.max_length, config=config,
                       task_type=task.task_type)  # fmt: skip
    start = time.perf_counter()
    out = train_task(req)
    seconds = time.perf_counter() - start
    if out.artifact is not None:
        art = out.artifact
        stored = len(art.to_bytes())
        trainable = art.theta.numel() + (0 if art.lam is None else art.lam.numel())
    else:
        stored = sum(p.numel() * 4 for p in out.model.parameters())
        trainable = sum(p.numel() for p in out.model.parameters())
    return {"lr_used": out.lr, "metrics": out.metrics, "bytes": stored, "trainable": trainable,
            "seconds": seconds}  # fmt: skip


def run_peft(task: Task, train, dev, name, lr, args) -> dict:
    import peft

    req = TrainRequest("minilm-l6", train, dev, task_type=task.task_type)
    space = output_space(req)
    base = load_base("minilm-l6", space.size, 0)
    model = peft.get_peft_model(base.model, peft_config(name))
    pad = base.tokenizer.pad_token_id or 0
    train_set = TokenizedDataset(train, base.tokenizer, args.max_length, space)
    dev_set = TokenizedDataset(dev, base.tokenizer, args.max_length, space)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    config = TrainConfig(max_steps=args.steps, batch_size=args.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, args.steps))
    metric = task.metric or space.default_metric
    best, step, start = -math.inf, 0, time.perf_counter()
    model.train()
    epoch = 0
    while step < args.steps:
        for batch in make_loader(train_set, args.batch_size, True, 0, pad, epoch=epoch):
            torch.manual_seed(step)  # dropout masks
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % max(1, args.steps // 2) == 0 or step == args.steps:
                loader = make_loader(dev_set, 64, False, 0, pad)
                logits = predict_logits(model, loader, torch.device("cpu"))
                scored = space.score(logits, dev_set.labels)
                best = max(best, scored[metric])
                model.train()
            if step >= args.steps:
                break
        epoch += 1
    seconds = time.perf_counter() - start
    buffer = io.BytesIO(save(peft.get_peft_model_state_dict(model)))
    return {"lr_used": lr, "metrics": {metric: best}, "bytes": len(buffer.getvalue()),
            "trainable": sum(p.numel() for p in params), "seconds": seconds}  # fmt: skip


def _rate(value: str) -> float | str:
    return value if value == "auto" else float(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "cola", "stsb"],
                        choices=sorted(TASKS))  # fmt: skip
    parser.add_argument("--methods", nargs="+", default=[*KILOTASK, *PEFT])
    parser.add_argument("--dims", nargs="+", type=int, default=[200, 1000])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--train-rows", type=int, default=None)
    parser.add_argument("--kilotask-lrs", nargs="+", type=_rate, default=["auto"],
                        help="kilotask's rates: auto (its default) and/or fixed ones")  # fmt: skip
    parser.add_argument(
        "--peft-lrs",
        type=int,
        default=2,
        help="how many of each PEFT method's rates to try (1: the first)",
    )
    parser.add_argument("--out", default="bench-accuracy.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    results = []
    for name in args.tasks:
        task = TASKS[name]
        train, dev = load(task, args.train_rows)
        for method in args.methods:
            if method in KILOTASK:
                dims = [0] if method == "full" else args.dims
                runs = [(d, lr) for d in dims for lr in args.kilotask_lrs]
            else:
                runs = [(None, lr) for lr in PEFT[method][: args.peft_lrs]]
            for dim, lr in runs:
                if method in KILOTASK:
                    got = run_kilotask(task, train, dev, method, max(dim, 1), lr, args)
                else:
                    got = run_peft(task, train, dev, method, lr, args)
                metric = task.metric or ("pearson" if task.task_type else "accuracy")
                row = {"task": name, "method": method, "dim": dim, "lr": lr,
                       "metric": metric, "best": round(got["metrics"][metric], 4),
                       "bytes": got["bytes"], "trainable": got["trainable"],
                       "lr_used": got["lr_used"],
                       "s_per_step": round(got["seconds"] / args.steps, 3),
                       "degenerate": bool(got["metrics"].get("degenerate"))}  # fmt: skip
                print(json.dumps(row), flush=True)
                results.append(row)
    Path(args.out).write_text(json.dumps({"args": vars(args), "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
