"""d90 against the relative generalisation gap, like the paper's Figure 5.

The paper (§5.3) finds that tasks and models with a lower d90 generalise better: a smaller
relative gap (train - eval) / (1 - eval). The d90 searches under docs/d90/ record only the dev
metric of each run, so this script retrains each search's run at its d90 (same setup, the
learning rate of that point, seed 0, through app.search.d90.train_run, the code path the search
uses)
and records the dev metric, the metric on the trainer's fixed 512-row training sample and the
relative gap in <search>/gap.json. With --figure it plots d90 (log x) against the gap in %.

    .venv/bin/python scripts/gap_at_d90.py --glue ../shared/data/glue \\
        docs/d90/sst2-said docs/d90/mrpc-did-lr --figure docs/d90/gap

A folder whose gap.json exists is not retrained unless --force. Runs are on CPU, one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = {"sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B"}  # search name prefix -> GLUE folder
TRAIN_ROWS = 512  # TrainConfig.train_eval_rows: the trainer's fixed training sample


def task_of(search: Path) -> str:
    prefix = search.name.split("-")[0]
    if prefix not in TASKS:
        raise SystemExit(f"{search}: no GLUE task for the prefix {prefix!r} (know {list(TASKS)})")
    return TASKS[prefix]


def search_options(results: dict) -> dict:
    """The method options the search trained with. SAID searches from before SAID groupings
    recorded none and had one λ per tensor; today's default is per layer, so say it."""
    options = {
        k: tuple(v) if isinstance(v, list) else v for k, v in results["setup"].get("options") or []
    }
    if results["plan"]["method"] == "said":
        options.setdefault("said_groups", "tensor")
    return options


def method_label(method: str, options: dict) -> str:
    if method == "said":
        return f"SAID per {options['said_groups']}"
    return method.upper() if method == "did" else method


def recorded(search: Path) -> dict | None:
    """The gap a newer search recorded itself (results.json `gap_at_d90`, from its d90 run's
    task file, 4 decimals): nothing to retrain. None for a search from before that."""
    results = json.loads((search / "results.json").read_text())
    at = results.get("gap_at_d90")
    if at is None:
        return None
    point = next(p for p in results["points"] if p["d"] == results["d90"])
    return {
        "search": search.name,
        "task": task_of(search),
        "method": results["plan"]["method"],
        "options": dict(results["setup"].get("options") or []),
        "d90": results["d90"],
        "lr": point["lr"],
        "budget_steps": results["setup"]["budget_steps"],
        "metric": results["setup"]["metric"],
        "recorded_metric": point["metric"],
        "eval_metric": at["metric"],
        "train_metric": at["train_metric"],
        "gap": at["gap"],
        "train_rows": TRAIN_ROWS,
        "seconds": 0,
    }


def retrain(search: Path, glue: Path) -> dict:
    from app.engine.artifact import TaskArtifact
    from app.engine.data import read_table
    from app.engine.metrics import relative_gap
    from app.engine.trainer import TrainCallbacks
    from app.search.d90 import train_run
    from app.search.setup import D90Setup

    class Seen(TrainCallbacks):
        """Progress, and the last evaluation's metrics unrounded (a task file rounds them)."""

        metrics: dict[str, float] = {}

        def on_step(self, step: int, total: int, loss: float) -> None:
            if step % 50 == 0 or step == total:
                print(f"  step {step}/{total} loss {loss:.4f}", flush=True)

        def on_eval(self, step: int, metrics: dict[str, float]) -> None:
            self.metrics = dict(metrics)

    results = json.loads((search / "results.json").read_text())
    if results.get("d90") is None:
        raise SystemExit(f"{search}: no d90 (censored or unfinished search)")
    setup_dict, method, d90 = results["setup"], results["plan"]["method"], results["d90"]
    point = next(p for p in results["points"] if p["d"] == d90)
    options = search_options(results)
    setup = D90Setup(
        model=setup_dict["model"],
        budget_steps=setup_dict["budget_steps"],
        batch_size=setup_dict["batch_size"],
        max_length=setup_dict["max_length"],
        metric=setup_dict["metric"],
        seed=setup_dict["seed"],
        options=tuple(sorted(options.items())),
    )
    task = task_of(search)
    train = read_table(glue / task / "train.tsv")
    eval_ = read_table(glue / task / "dev.tsv", train.columns)  # as `kilotask d90` reads it
    print(f"{search.name}: {method} {options} d={d90} lr={point['lr']:g} "
          f"{setup.budget_steps} steps", flush=True)  # fmt: skip
    seen = Seen()
    start = time.perf_counter()
    run = (method, d90, point["lr"])
    value, task_bytes = train_run(setup, train, eval_, run, device="cpu", callbacks=seen)
    seconds = time.perf_counter() - start
    metric = setup.metric
    stored = TaskArtifact.from_bytes(task_bytes).metrics
    full = seen.metrics
    for key, name in ((metric, f"eval_{metric}"), (f"train_{metric}", f"train_{metric}")):
        if abs(full[key] - stored[name]) > 1e-4:  # the task file rounds to 4 places
            raise SystemExit(f"{search}: {name} {stored[name]} in the task, {full[key]} seen")
    assert value == full[metric]
    out = {
        "search": search.name,
        "task": task,
        "method": method,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "d90": d90,
        "lr": point["lr"],
        "budget_steps": setup.budget_steps,
        "metric": metric,
        "recorded_metric": point["metric"],
        "eval_metric": full[metric],
        "train_metric": full[f"train_{metric}"],
        "gap": relative_gap(full[f"train_{metric}"], full[metric]),
        "train_rows": TRAIN_ROWS,
        "seconds": round(seconds, 1),
    }
    if point.get("seeds") and len(point["seeds"]) > 1:
        out["recorded_seed0"] = point["seeds"][0]  # recorded_metric is the mean over seeds
    (search / "gap.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"  {metric}: dev {out['eval_metric']:.4f} (recorded {out['recorded_metric']:.4f}), "
          f"train sample {out['train_metric']:.4f}, gap {out['gap']:.1%}, {seconds:.0f} s",
          flush=True)  # fmt: skip
    return out


def gap_figure(rows: list[dict]):
    """d90 (log x) against the relative gap in %, one labelled point per search, coloured by
    task; figure size and style as app.search.curve.curve_figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    tasks = sorted({r["task"] for r in rows}, key=lambda t: list(TASKS.values()).index(t))
    for i, task in enumerate(tasks):
        mine = sorted((r for r in rows if r["task"] == task), key=lambda r: r["d90"])
        ax.plot([r["d90"] for r in mine], [100 * r["gap"] for r in mine], "o",
                color=f"C{i}", label=task)  # fmt: skip
        for j, r in enumerate(mine):  # alternate above and below: close d90s stay readable
            ax.annotate(f"{task} {method_label(r['method'], r['options'])}",
                        (r["d90"], 100 * r["gap"]), xytext=(0, 7 if j % 2 == 0 else -12),
                        textcoords="offset points", ha="center", fontsize="x-small",
                        color=f"C{i}")  # fmt: skip
    ax.set_xscale("log")
    ds = sorted(r["d90"] for r in rows)
    ticks = [t for t in (100, 200, 500, 1000, 2000, 5000, 10000, 20000)
             if ds[0] / 2 <= t <= ds[-1] * 2]  # fmt: skip
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(t) for t in ticks]))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlim(ds[0] / 1.6, ds[-1] * 1.6)
    low, high = min(100 * r["gap"] for r in rows), max(100 * r["gap"] for r in rows)
    pad = max(high - low, 1.0) * 0.15
    ax.set_ylim(min(low - pad, 0), high + pad)
    ax.axhline(0, color="black", alpha=0.3)
    ax.set_xlabel("d90 (subspace dimension)")
    ax.set_ylabel("relative generalisation gap (%)")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("searches", nargs="+", type=Path, help="d90 search folders (docs/d90/…)")
    parser.add_argument("--glue", type=Path, required=True, help="GLUE data (SST-2/, MRPC/)")
    parser.add_argument("--force", action="store_true", help="retrain even if gap.json exists")
    parser.add_argument("--figure", type=Path, help="write FIGURE.png and FIGURE.svg")
    args = parser.parse_args(argv)
    rows = []
    for search in args.searches:
        path = search / "gap.json"
        if path.exists() and not args.force:
            print(f"{search.name}: gap.json exists, kept", flush=True)
            rows.append(json.loads(path.read_text()))
        else:
            row = recorded(search) or retrain(search, args.glue)
            if row["seconds"] == 0:
                (search / "gap.json").write_text(json.dumps(row, indent=2) + "\n")
            rows.append(row)
    if args.figure:
        import matplotlib.pyplot as plt

        fig = gap_figure(rows)
        for fmt in ("png", "svg"):
            fig.savefig(args.figure.with_suffix(f".{fmt}"), format=fmt, dpi=120)
        plt.close(fig)
        print(f"wrote {args.figure}.png and .svg", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
