"""What several commands read from their arguments: the device, the method options and the
train/eval tables."""

from __future__ import annotations

import argparse


def device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def method_options(args: argparse.Namespace) -> dict:
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


def read_train_eval(args: argparse.Namespace):
    """--train and --eval (if given) with the column options; eval reads train's columns."""
    from app.engine.data import ColumnSpec, read_table

    columns = ColumnSpec(args.text_column, args.text_pair_column, args.label_column)
    train_data = read_table(args.train, columns, names=args.columns)
    if not args.eval:
        return train_data, None
    return train_data, read_table(args.eval, train_data.columns, names=args.columns)
