"""Commands on task files: train, predict (here or on a server), export, inspect."""

from __future__ import annotations

import argparse
import json
import os
import sys

from app.cli.inputs import device, method_options, read_train_eval


def _train_out(args: argparse.Namespace) -> str | None:
    """Default and check --out before any data is read: a task file for the subspace methods,
    a model folder for --method full. Returns an error message, or None."""
    from pathlib import Path

    full = args.method == "full"
    if args.out is None:
        args.out = "task-model" if full else "task.safetensors"
    out = Path(args.out)
    if full:
        if out.suffix.lower() == ".safetensors":
            return (f"--method full writes a model folder, not a task file: pick a folder name "
                    f"for --out, not {args.out}")  # fmt: skip
        if out.exists() and not out.is_dir():
            return (f"--out {args.out} is an existing file; --method full writes a model folder "
                    f"there: pick a folder name")  # fmt: skip
        return None
    if out.is_dir():
        return (f"--out {args.out} is a folder; --method {args.method} writes one task file: give "
                f"a file path, e.g. {out / 'task.safetensors'}")  # fmt: skip
    parent = out.parent
    if not parent.is_dir():
        return f"--out {args.out}: the folder {parent} does not exist (create it first)"
    return None


def train(args: argparse.Namespace) -> int:
    problem = _train_out(args)
    if problem:
        print(f"kilotask: error: {problem}", file=sys.stderr)
        return 2
    from app.cli.progress import ProgressBar
    from app.engine.pipeline import TrainRequest, train_task
    from app.engine.trainer import TrainConfig

    train_data, eval_data = read_train_eval(args)
    config = TrainConfig(
        method=args.method,
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        patience=args.patience or None,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        metric=args.metric,
        warmup_ratio=args.warmup_ratio,
        data_seed=args.data_seed,
        checkpoint_every=args.checkpoint_every if args.checkpoint else None,
        precision=args.precision,
    )
    req = TrainRequest(
        args.model,
        train_data,
        eval_data,
        args.dim,
        args.seed,
        args.max_length,
        args.dtype,
        config,
        args.task,
        method_options(args),
        holdout=True,
    )
    from app.engine.metrics import reported

    with ProgressBar(disabled=args.quiet) as bar:
        outcome = train_task(req, bar, args.checkpoint, device(args.device))
    metric = args.metric or ("pearson" if args.task == "regression" else "accuracy")
    summary = {f"eval_{metric}": None}  # stays null without --eval
    summary.update(reported(outcome.metrics))
    summary.update(method=args.method, steps=outcome.step, lr=outcome.lr)
    if outcome.probe is not None:
        summary["lr_probe"] = outcome.probe.as_event()["losses"]
    if outcome.held_out_rows:
        summary["held_out_rows"] = outcome.held_out_rows  # evaluated on these, not on --eval
    if outcome.stopped_early:
        summary["stopped_early"] = True
    if outcome.verdict is not None and outcome.verdict.degenerate:
        summary["degenerate"] = True
        print(f"kilotask: warning: {outcome.verdict.warning()}", file=sys.stderr)
    if outcome.artifact is None:
        outcome.model.save_pretrained(args.out)
        outcome.tokenizer.save_pretrained(args.out)
        summary.update(dim=sum(p.numel() for p in outcome.model.parameters()), out=args.out)
    else:
        size = outcome.artifact.save(args.out)
        summary.update(dim=args.dim, bytes=size, task_digest=outcome.artifact.digest, out=args.out)
    print(json.dumps(summary))
    return 0


def predict(args: argparse.Namespace) -> int:
    from app.engine.data import ColumnSpec, read_table

    if args.server:
        from app.cli.client import KilotaskClient
        from app.engine.task_types import OutputSpace

        client = KilotaskClient(args.server, args.api_key or os.environ.get("KILOTASK_API_KEY"))
        meta = client.task(args.task)
        text_col, pair_col = meta["text_column"], meta["text_pair_column"]
        stats = meta.get("target_stats")
        space = OutputSpace(
            meta.get("task_type") or "classification",
            tuple(meta["label_names"]),
            None if stats is None else tuple(stats),
        )
    else:
        from app.engine.artifact import TaskArtifact

        task = TaskArtifact.load(args.task)
        text_col, pair_col, space = task.text_column, task.text_pair_column, task.space
    columns = ColumnSpec(
        args.text_column or text_col, args.text_pair_column or pair_col, args.label_column
    )
    data = read_table(
        args.input, columns, require_labels=args.label_column is not None, names=args.columns
    )
    if args.server:
        rows = client.infer(args.task, data.texts, data.text_pairs, args.batch_size)
    else:
        from app.engine.pipeline import predict_task

        rows = predict_task(task, data, args.model, args.batch_size, device(args.device)).outputs
    for row in rows:
        print(json.dumps(row))
    if data.labels is not None:
        print(json.dumps({**space.score_rows(rows, data.labels), "rows": len(rows)}))
    return 0


def export(args: argparse.Namespace) -> int:
    from pathlib import Path

    out = Path(args.out)
    if out.suffix.lower() == ".safetensors":
        print(f"kilotask: error: export writes a folder, not a file: pick a folder name for "
              f"--out, not {args.out}", file=sys.stderr)  # fmt: skip
        return 2
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"kilotask: error: --out {args.out} exists and is not an empty folder",
              file=sys.stderr)  # fmt: skip
        return 2
    from app.engine.artifact import TaskArtifact
    from app.engine.export import export_task

    task = TaskArtifact.load(args.task)
    out = export_task(task, args.format, args.out, args.model)
    files = sorted(p.name for p in out.iterdir())
    print(json.dumps({"format": args.format, "out": str(out), "files": files}))
    return 0


def inspect(args: argparse.Namespace) -> int:
    from app.engine.artifact import TaskArtifact
    from app.engine.pipeline import file_size

    task = TaskArtifact.load(args.task)
    meta = task.describe()
    if task.groups is not None:  # SAID: which tensors each of its `lambdas` scales
        meta["said_groups"] = task.groups  # "tensor" for a file from before groupings
    meta.update(bytes=file_size(args.task))
    print(json.dumps(meta, indent=2))
    return 0


def import_dir(args: argparse.Namespace) -> int:
    """Every *.safetensors task file under a folder, imported on a server in chunks."""
    from pathlib import Path

    from tqdm import tqdm

    from app.cli.client import KilotaskClient, ServerError

    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"kilotask: error: {args.folder} is not a folder of task files", file=sys.stderr)
        return 2
    paths = sorted(folder.rglob("*.safetensors"))
    if not paths:
        print(f"kilotask: error: no *.safetensors files under {args.folder}", file=sys.stderr)
        return 2
    client = KilotaskClient(args.server, args.api_key or os.environ.get("KILOTASK_API_KEY"))
    totals = {"files": len(paths), "created": 0, "existing": 0, "failed": 0}
    with tqdm(total=len(paths), file=sys.stderr, disable=args.quiet, desc="import") as bar:
        for lo in range(0, len(paths), args.chunk):
            chunk = paths[lo : lo + args.chunk]
            try:
                got = client.import_tasks(
                    [(str(p.relative_to(folder)), p.read_bytes()) for p in chunk]
                )
            except ServerError as exc:
                if exc.status != 422:  # 422: no file of this chunk imports; go on
                    raise
                bar.write(f"kilotask: {exc}", file=sys.stderr)
                got = {"created": 0, "existing": 0, "failed": len(chunk), "data": []}
            for key in ("created", "existing", "failed"):
                totals[key] += got[key]
            for item in got["data"]:
                if "error" in item:
                    bar.write(f"kilotask: {item['filename']}: {item['error']['message']}",
                              file=sys.stderr)  # fmt: skip
            bar.update(len(chunk))
    print(json.dumps(totals))
    return 2 if totals["failed"] else 0
