"""The `kilotask` argument parser. Flags are a contract (README): they never change meaning.

Parsing imports no torch, so `--help` and bad flags answer at once.
"""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "The `kilotask` command line: train, predict and inspect tasks. Flags are a contract (README)."
)

# app.engine.task_types' names, spelled out so that parsing arguments imports no torch (a unit
# test checks that they match)
TASK_TYPES = ("classification", "regression")
METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")


def add_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", help="text column (default: auto-detect, e.g. 'sentence')")
    p.add_argument("--text-pair-column", help="second text column for sentence pairs")
    p.add_argument("--label-column", help="label column (default: auto-detect, e.g. 'label')")
    p.add_argument(
        "--columns",
        type=lambda v: [name.strip() for name in v.split(",")],
        help="names for the columns of a headerless .tsv/.csv, in order (e.g. GLUE CoLA: "
        "source,label,original,sentence)",
    )


def add_lowrank(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rank", type=int, help="lowrank: rank r of each target's delta (default 4)")
    p.add_argument(
        "--targets",
        nargs="+",
        help="lowrank: names of the nn.Linear layers to adapt (default: query value)",
    )
    p.add_argument(
        "--scales",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="lowrank: one learned scale per target (counted in d; default on)",
    )


def add_said_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--said-groups",
        choices=["layer", "tensor"],
        help="said: one scale λ per layer group (embeddings, each layer, the rest; the "
        "default) or per parameter tensor; the scales count in d",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="fp32 (default), or bf16 autocast: faster on GPUs; the subspace delta is kept out "
        "of the bf16 rounding of the weights, but bf16 activations still blur small deltas",
    )


def add_task(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        choices=TASK_TYPES,
        help="classification (the default) or regression (one output, MSE, Pearson/Spearman); "
        "a label column of many distinct numbers needs it said",
    )


def learning_rate(value: str) -> float | str:
    """--lr: a positive number, or 'auto'."""
    if value == "auto":
        return value
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return rate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kilotask", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune a task in a d-dimensional subspace")
    t.add_argument("--model", default="minilm-l6", help="registered id, local HF folder or hub id")
    t.add_argument("--train", required=True, help="CSV, TSV or JSONL file with a header")
    t.add_argument("--eval", help="evaluation file (same columns)")
    add_columns(t)
    t.add_argument("--method", choices=["said", "did", "lowrank", "full"], default="said")
    t.add_argument("--dim", type=int, default=1000, help="subspace dimension d (SAID counts λ)")
    add_lowrank(t)
    add_said_precision(t)
    t.add_argument("--seed", type=int, default=0, help="projection and head seed")
    steps = t.add_mutually_exclusive_group()
    steps.add_argument("--epochs", type=int)
    steps.add_argument("--max-steps", type=int)
    t.add_argument(
        "--lr",
        type=learning_rate,
        default="auto",
        help="learning rate, or 'auto' (default): a short probe of four rates on a held-out "
        "slice of the training data picks it (0.05-0.4 subspace, 2e-5-2e-4 full), costing "
        "4 x min(40, steps/16) extra steps; a subspace method's rate is θ's at d = 1000, "
        "scaled by √(1000/d) at other d so that a step moves the weights as far",
    )
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--max-length", type=int, default=128)
    t.add_argument("--eval-every", type=int, help="evaluate every N steps (default: per epoch)")
    t.add_argument(
        "--patience",
        type=int,
        default=3,
        help="stop after N evaluations in a row without a better metric (the best state is "
        "kept; default 3; 0: never stop early)",
    )
    add_task(t)
    t.add_argument(
        "--metric",
        choices=METRICS,
        help="eval metric that picks the best θ_d (default: accuracy; regression: pearson)",
    )
    t.add_argument("--warmup-ratio", type=float, default=0.06)
    t.add_argument("--data-seed", type=int, default=0, help="shuffling and dropout seed")
    t.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        default="float32",
        help="storage precision of θ_d and λ (float16 halves the file)",
    )
    t.add_argument("--checkpoint", help="checkpoint file: resumed from if present")
    t.add_argument("--checkpoint-every", type=int, default=50)
    t.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    t.add_argument(
        "--out",
        help="task file (default task.safetensors); for --method full a model folder "
        "(default task-model)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("predict", help="predict rows with a task file (or a server's task)")
    p.add_argument("task", help="task .safetensors file, or a task id with --server")
    p.add_argument("--input", required=True, help="CSV, TSV or JSONL file with a header")
    add_columns(p)
    p.add_argument("--model", help="base model to rebuild on (default: the task's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--server", help="URL of a running kilotask server: predict there")
    p.add_argument("--api-key", help="API key for --server (default: $KILOTASK_API_KEY)")

    im = sub.add_parser("import", help="import a folder of task files on a server, in chunks")
    im.add_argument("folder", help="a folder: every *.safetensors file under it is imported")
    im.add_argument("--server", required=True, help="URL of a running kilotask server")
    im.add_argument("--api-key", help="API key (default: $KILOTASK_API_KEY)")
    im.add_argument("--chunk", type=int, default=500, help="task files per request (1 to 1000)")
    im.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("export", help="write a task as a PEFT LoRA adapter or a merged HF model")
    e.add_argument("task", help="task .safetensors file")
    e.add_argument("--format", choices=["peft", "hf"], required=True)
    e.add_argument("--out", required=True, help="output folder (new or empty, not *.safetensors)")
    e.add_argument("--model", help="base model to rebuild on (default: the task's)")

    i = sub.add_parser("inspect", help="print a task file's metadata as JSON")
    i.add_argument("task")

    d = sub.add_parser("d90", help="search the smallest d reaching 90%% of full fine-tuning")
    d.add_argument("--model", default="minilm-l6")
    d.add_argument("--train", required=True, help="CSV, TSV or JSONL file with a header")
    d.add_argument("--eval", required=True, help="evaluation file (same columns)")
    add_columns(d)
    d.add_argument("--method", choices=["said", "did", "lowrank"], default="said")
    add_lowrank(d)
    add_said_precision(d)
    d.add_argument(
        "--lr-grid",
        type=float,
        nargs="+",
        default=[0.02, 0.05, 0.1, 0.2],  # app.search.plan.LR_GRID: four per d, as in the paper
        help="learning rates tried at every d (the best counts)",
    )
    d.add_argument("--full-lr-grid", type=float, nargs="+", default=[2e-5, 5e-5])
    d.add_argument("--min-d", type=int, default=10)
    d.add_argument("--max-d", type=int, default=100_000)
    d.add_argument("--sweep-points", type=int, default=5, help="log-spaced d before bisection")
    d.add_argument("--tolerance", type=float, default=0.1, help="stop when hi/lo <= 1 + this")
    d.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="seeds for a d whose metric is within one standard error of the bar: N-1 more "
        "runs at its best learning rate, and it passes on their mean",
    )
    d.add_argument("--budget-steps", type=int, default=200, help="training steps per run")
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--max-length", type=int, default=128)
    add_task(d)
    d.add_argument("--metric", choices=METRICS, help="default: accuracy; regression: pearson")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    d.add_argument("--out", default="d90-out", help="output folder (resumed if it holds a search)")
    d.add_argument(
        "--reuse",
        metavar="DIR",
        help="take the finished runs of the search in DIR instead of redoing them: its full "
        "fine-tuning (the bar) and its runs of --method; the settings and data must match",
    )
    d.add_argument("--quiet", action="store_true", help="no per-run lines on stderr")
    sub.add_parser("migrate", help="create or upgrade the database schema (Alembic)")
    s = sub.add_parser("serve", help="run the API (and, on embedded defaults, a worker)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--no-worker", action="store_true", help="do not start a local worker")
    w = sub.add_parser("worker", help="run a Celery worker on the gpu queue (one per GPU)")
    w.add_argument("--loglevel", default="INFO")
    k = sub.add_parser("keys", help="manage API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create an API key for a tenant (made if new)")
    kc.add_argument("--tenant", required=True)
    kc.add_argument(
        "--admin",
        action="store_true",
        help="an operator's key: /v1/serving shows every tenant's resident tasks",
    )
    kl = ksub.add_parser(
        "list",
        help="print the API keys as JSON lines, one per key: id, tenant, tenant_id, created_at, "
        "revoked_at (never the key or its hash)",
    )
    kl.add_argument("--tenant", help="only this tenant's keys")
    kr = ksub.add_parser("revoke", help="revoke an API key: refused (401) from the next request")
    kr.add_argument("key_id", metavar="KEY_ID", help="the key's id, key_… (see: keys list)")
    return parser
