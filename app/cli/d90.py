"""`kilotask d90`: search a task's intrinsic dimension d90 in a folder (resumable)."""

from __future__ import annotations

import argparse
import json
import sys

from app.cli.inputs import device, method_options, read_train_eval


def d90(args: argparse.Namespace) -> int:
    from app.search.d90 import run_d90
    from app.search.plan import D90Plan
    from app.search.setup import D90Setup

    if args.budget_steps < 1 or args.sweep_points < 1 or args.tolerance <= 0 or args.seeds < 1:
        print("kilotask: error: --budget-steps, --sweep-points, --tolerance and --seeds must be "
              "positive", file=sys.stderr)  # fmt: skip
        return 2
    train_data, eval_data = read_train_eval(args)
    setup = D90Setup(
        args.model,
        args.budget_steps,
        args.batch_size,
        args.max_length,
        args.metric or ("pearson" if args.task == "regression" else "accuracy"),
        args.seed,
        tuple(sorted(method_options(args).items())),
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
        device(args.device),
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
