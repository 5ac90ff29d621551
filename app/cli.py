"""The `kilotask` command line: train, predict and inspect tasks. Flags are a contract (README).

Errors the user can fix exit with status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

# app.engine.task_types' names, spelled out so that parsing arguments imports no torch (a unit
# test checks that they match)
TASK_TYPES = ("classification", "regression")
METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched at run time unless asked
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _add_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", help="text column (default: auto-detect, e.g. 'sentence')")
    p.add_argument("--text-pair-column", help="second text column for sentence pairs")
    p.add_argument("--label-column", help="label column (default: auto-detect, e.g. 'label')")
    p.add_argument(
        "--columns",
        type=lambda v: [name.strip() for name in v.split(",")],
        help="names for the columns of a headerless .tsv/.csv, in order (e.g. GLUE CoLA: "
        "source,label,original,sentence)",
    )


def _add_lowrank(p: argparse.ArgumentParser) -> None:
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


def _add_said_precision(p: argparse.ArgumentParser) -> None:
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


def _method_options(args: argparse.Namespace) -> dict:
    """--rank/--targets/--scales (lowrank) and --said-groups (said) as method options (refused
    by methods that do not take them); said always names its grouping."""
    from app.engine.errors import SubspaceConfigError
    from app.engine.groups import DEFAULT_SAID_GROUPS

    opts = {"rank": args.rank, "targets": args.targets, "scales": args.scales}
    if args.method == "said":
        opts["said_groups"] = args.said_groups or DEFAULT_SAID_GROUPS
    elif args.said_groups is not None:
        raise SubspaceConfigError(f"--said-groups applies to --method said, not {args.method}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items() if v is not None}


def _add_task(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        choices=TASK_TYPES,
        help="classification (the default) or regression (one output, MSE, Pearson/Spearman); "
        "a label column of many distinct numbers needs it said",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kilotask", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune a task in a d-dimensional subspace")
    t.add_argument("--model", default="minilm-l6", help="registered id, local HF folder or hub id")
    t.add_argument("--train", required=True, help="CSV, TSV or JSONL file with a header")
    t.add_argument("--eval", help="evaluation file (same columns)")
    _add_columns(t)
    t.add_argument("--method", choices=["said", "did", "lowrank", "full"], default="said")
    t.add_argument("--dim", type=int, default=1000, help="subspace dimension d (SAID counts λ)")
    _add_lowrank(t)
    _add_said_precision(t)
    t.add_argument("--seed", type=int, default=0, help="projection and head seed")
    steps = t.add_mutually_exclusive_group()
    steps.add_argument("--epochs", type=int)
    steps.add_argument("--max-steps", type=int)
    t.add_argument("--lr", type=float, help="learning rate (default: 0.2 subspace, 3e-5 full)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--max-length", type=int, default=128)
    t.add_argument("--eval-every", type=int, help="evaluate every N steps (default: per epoch)")
    _add_task(t)
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
    _add_columns(p)
    p.add_argument("--model", help="base model to rebuild on (default: the task's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--server", help="URL of a running kilotask server: predict there")
    p.add_argument("--api-key", help="API key for --server (default: $KILOTASK_API_KEY)")

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
    _add_columns(d)
    d.add_argument("--method", choices=["said", "did", "lowrank"], default="said")
    _add_lowrank(d)
    _add_said_precision(d)
    d.add_argument(
        "--lr-grid",
        type=float,
        nargs="+",
        default=[0.02, 0.05, 0.1, 0.2],  # engine.intrinsic.LR_GRID: four per d, as in the paper
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
    _add_task(d)
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
    kl = ksub.add_parser(
        "list",
        help="print the API keys as JSON lines, one per key: id, tenant, tenant_id, created_at, "
        "revoked_at (never the key or its hash)",
    )
    kl.add_argument("--tenant", help="only this tenant's keys")
    kr = ksub.add_parser("revoke", help="revoke an API key: refused (401) from the next request")
    kr.add_argument("key_id", metavar="KEY_ID", help="the key's id, key_… (see: keys list)")
    return parser


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from app.client import ServerError
    from app.engine.errors import EngineError
    from app.errors import KilotaskError

    try:
        commands = {
            "train": _train,
            "predict": _predict,
            "inspect": _inspect,
            "export": _export,
            "d90": _d90,
            "migrate": _migrate,
            "keys": _keys,
            "serve": _serve,
            "worker": _worker,
        }
        return commands[args.command](args)
    except EngineError as exc:
        print(f"kilotask: error: {exc}", file=sys.stderr)
        return 2
    except ServerError as exc:
        print(f"kilotask: error: {exc}", file=sys.stderr)
        return 2
    except KilotaskError as exc:
        print(f"kilotask: error: {exc.message}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"kilotask: error: no such file: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kilotask: interrupted", file=sys.stderr)
        return 130


def _read_train_eval(args: argparse.Namespace):
    """--train and --eval (if given) with the column options; eval reads train's columns."""
    from app.engine.data import ColumnSpec, read_table

    columns = ColumnSpec(args.text_column, args.text_pair_column, args.label_column)
    train_data = read_table(args.train, columns, names=args.columns)
    if not args.eval:
        return train_data, None
    return train_data, read_table(args.eval, train_data.columns, names=args.columns)


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


def _train(args: argparse.Namespace) -> int:
    problem = _train_out(args)
    if problem:
        print(f"kilotask: error: {problem}", file=sys.stderr)
        return 2
    from app.cli_progress import ProgressBar
    from app.engine.pipeline import TrainRequest, train_task
    from app.engine.trainer import TrainConfig

    train_data, eval_data = _read_train_eval(args)
    config = TrainConfig(
        method=args.method,
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
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
        _method_options(args),
    )
    from app.engine.metrics import reported

    with ProgressBar(disabled=args.quiet) as bar:
        outcome = train_task(req, bar, args.checkpoint, _device(args.device))
    metric = args.metric or ("pearson" if args.task == "regression" else "accuracy")
    summary = {f"eval_{metric}": None}  # stays null without --eval
    summary.update(reported(outcome.metrics))
    summary.update(method=args.method, steps=outcome.step)
    if outcome.artifact is None:
        outcome.model.save_pretrained(args.out)
        outcome.tokenizer.save_pretrained(args.out)
        summary.update(dim=sum(p.numel() for p in outcome.model.parameters()), out=args.out)
    else:
        size = outcome.artifact.save(args.out)
        summary.update(dim=args.dim, bytes=size, task_digest=outcome.artifact.digest, out=args.out)
    print(json.dumps(summary))
    return 0


def _d90(args: argparse.Namespace) -> int:
    from app.d90 import D90Setup, run_d90
    from app.engine.intrinsic import D90Plan

    if args.budget_steps < 1 or args.sweep_points < 1 or args.tolerance <= 0 or args.seeds < 1:
        print("kilotask: error: --budget-steps, --sweep-points, --tolerance and --seeds must be "
              "positive", file=sys.stderr)  # fmt: skip
        return 2
    train_data, eval_data = _read_train_eval(args)
    setup = D90Setup(
        args.model,
        args.budget_steps,
        args.batch_size,
        args.max_length,
        args.metric or ("pearson" if args.task == "regression" else "accuracy"),
        args.seed,
        tuple(sorted(_method_options(args).items())),
        precision=args.precision,
        task_type=args.task,
    )
    setup.space(train_data).check_metric(setup.metric)
    plan = D90Plan(
        method=args.method,
        min_d=args.min_d,
        max_d=args.max_d,
        sweep_points=args.sweep_points,
        tolerance=args.tolerance,
        lr_grid=tuple(args.lr_grid),
        full_lr_grid=tuple(args.full_lr_grid),
        seeds=args.seeds,
    )

    def log(kind: str, data: dict) -> None:
        if not args.quiet:
            shown = {k: v for k, v in data.items() if k != "partial"}
            print(json.dumps({"event": kind} | shown), file=sys.stderr, flush=True)

    result = run_d90(
        setup,
        plan,
        train_data,
        eval_data,
        args.out,
        _device(args.device),
        on_event=log,
        reuse=args.reuse,
    )
    if result.degenerate:
        print(
            f"kilotask: warning: full fine-tuning reached {result.full_metric:.4f}, so the bar "
            f"({result.bar:.4f}) is not above always predicting the majority class "
            f"({result.floor:.4f}): no d90 to report; raise --budget-steps or --full-lr-grid",
            file=sys.stderr,
        )
    else:  # censoring, a non-monotone order, a decision within one standard error
        for note in result.notes:
            print(f"kilotask: warning: {note}", file=sys.stderr)
    print(json.dumps({"d90": result.d90, "d90_text": result.d90_text,
                      "censored": result.censored, "monotone": result.monotone,
                      "bracket": result.bracket, "full": result.full_metric,
                      "bar": result.bar, "floor": result.floor,
                      **({} if args.task == "regression" else {"majority": result.floor}),
                      "degenerate": result.degenerate, "out": args.out}))  # fmt: skip
    return 0


def _predict(args: argparse.Namespace) -> int:
    from app.engine.data import ColumnSpec, read_table

    if args.server:
        from app.client import KilotaskClient
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

        rows = predict_task(task, data, args.model, args.batch_size, _device(args.device)).outputs
    for row in rows:
        print(json.dumps(row))
    if data.labels is not None:
        print(json.dumps({**space.score_rows(rows, data.labels), "rows": len(rows)}))
    return 0


def _export(args: argparse.Namespace) -> int:
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


def _inspect(args: argparse.Namespace) -> int:
    from app.engine.artifact import TaskArtifact
    from app.engine.pipeline import file_size

    task = TaskArtifact.load(args.task)
    meta = task.describe()
    if task.groups is not None:  # SAID: which tensors each of its `lambdas` scales
        meta["said_groups"] = task.groups  # "tensor" for a file from before groupings
    meta.update(bytes=file_size(args.task))
    print(json.dumps(meta, indent=2))
    return 0


def _settings():
    """The service settings, or KilotaskError (one line, exit 2) naming a bad KILOTASK_* value."""
    from pydantic import ValidationError

    from app.config import get_settings
    from app.errors import KilotaskError

    try:
        return get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        what = f"setting KILOTASK_{where.upper()}" if where else "settings"
        raise KilotaskError(f"bad {what}: {first['msg']}") from None


def _open_database():
    """Settings and a session factory on a database that exists and is at the schema head
    (data folder made, migrations run), or KilotaskError if it cannot be opened."""
    from sqlalchemy.exc import OperationalError

    from app.db.migrate import prepare_database
    from app.db.session import session_factory
    from app.errors import KilotaskError

    settings = _settings()
    try:
        prepare_database(settings)
    except (OperationalError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        where = settings.database_url.split("@")[-1]
        raise KilotaskError(f"cannot open the database {where}: {reason}") from None
    return settings, session_factory(settings)


def _migrate(args: argparse.Namespace) -> int:
    settings, _ = _open_database()
    print(json.dumps({"database": settings.database_url.split("@")[-1], "schema": "head"}))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from workers.celery_app import app

    app.worker_main(
        [
            "worker",
            "-Q",
            "gpu",
            "-P",
            "solo",
            f"--loglevel={args.loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def _die_with_parent() -> None:
    """Linux: the local worker gets SIGTERM when `serve` exits, however it exits (uvicorn
    re-raises the signal that stopped it, so a `finally` is not enough)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _serve(args: argparse.Namespace) -> int:
    """Migrate, make a first API key if there is none, start the sweeper and a supervised
    local worker process (the embedded broker is a folder, so API and worker share it), then
    serve until interrupted."""
    import uvicorn

    from app import supervisor
    from app.auth import create_key
    from app.config import get_settings
    from app.db.migrate import upgrade
    from app.db.models import ApiKey
    from app.db.session import session_factory
    from app.sweeper import Sweeper

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    with session_factory(settings)() as session:
        if session.query(ApiKey).count() == 0:
            _, key = create_key(session, "local")
            (settings.data_dir / "api_key").write_text(key + "\n")
            print(f"kilotask: created an API key for tenant 'local': {key}", file=sys.stderr)
            print(f"kilotask: (also saved in {settings.data_dir / 'api_key'})", file=sys.stderr)
    sweeper = Sweeper(settings).start()
    worker = None
    if not args.no_worker:
        worker = supervisor.WorkerSupervisor(
            [sys.executable, "-m", "app.cli", "worker", "--loglevel=WARNING"],
            on_exit=sweeper.worker_died,
            # its own process group keeps our shutdown signals from it; it dies with us
            popen_options={"start_new_session": True, "preexec_fn": _die_with_parent},
        ).start()
        supervisor.install(worker)
    try:
        uvicorn.run("app.main:app", host=args.host, port=args.port)
    finally:
        sweeper.stop()
        if worker is not None:
            worker.stop()
    return 0


def _keys(args: argparse.Namespace) -> int:
    """keys create | list | revoke, on a database made and migrated first (a fresh HOME works
    before the first `serve`)."""
    from sqlalchemy.exc import OperationalError

    from app.errors import KilotaskError

    name = args.tenant.strip() if getattr(args, "tenant", None) is not None else None
    if args.keys_command == "create" and (not name or len(name) > 100):
        print("kilotask: error: --tenant must be 1 to 100 characters", file=sys.stderr)
        return 2
    settings, sessions = _open_database()
    try:
        with sessions() as session:
            return {"create": _keys_create, "list": _keys_list, "revoke": _keys_revoke}[
                args.keys_command
            ](session, args, name)
    except OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        where = settings.database_url.split("@")[-1]
        raise KilotaskError(f"cannot use the database {where}: {reason}") from None


def _keys_create(session, args: argparse.Namespace, name: str) -> int:
    from app.auth import create_key

    tenant, key = create_key(session, name)
    print(json.dumps({"tenant": tenant.name, "tenant_id": tenant.id, "api_key": key}))
    return 0


def _keys_list(session, args: argparse.Namespace, name: str | None) -> int:
    from sqlalchemy import select

    from app.auth import list_keys
    from app.db.models import Tenant

    if name is not None and session.scalar(select(Tenant.id).where(Tenant.name == name)) is None:
        print(f"kilotask: error: no tenant named {name!r}", file=sys.stderr)
        return 2
    for key, tenant in list_keys(session, name):
        print(json.dumps({"id": key.id, "tenant": tenant.name, "tenant_id": tenant.id,
                          "created_at": _timestamp(key.created_at),
                          "revoked_at": _timestamp(key.revoked_at)}))  # fmt: skip
    return 0


def _keys_revoke(session, args: argparse.Namespace, name: None) -> int:
    from app.auth import revoke_key

    key, newly = revoke_key(session, args.key_id.strip())
    revoked_at = _timestamp(key.revoked_at)
    if not newly:
        print(f"kilotask: {key.id} was already revoked (at {revoked_at})", file=sys.stderr)
    print(json.dumps({"id": key.id, "revoked_at": revoked_at, "already_revoked": not newly}))
    return 0


def _timestamp(when) -> str | None:
    """ISO 8601 in UTC (SQLite hands timestamps back without their zone)."""
    from datetime import UTC

    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


if __name__ == "__main__":
    sys.exit(main())
