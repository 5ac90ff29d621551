"""Accuracy against stored bytes, one chart per task (issue 22), from bench_accuracy.py's JSON:
one point per method and size (a PEFT method at its best learning rate; kilotask at its
default, `--lr auto`), the classifier head included in the bytes, and each family's frontier
below a byte limit (default 100 KB). Writes <task>.png and <task>.svg, and prints per task
which family's frontier is higher.

    .venv/bin/python bench/plot_accuracy.py docs/perf/*-bench-accuracy-*.json --out docs/perf/charts
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

KILOTASK = {"said", "did", "lowrank"}


def best_points(runs: list[dict]) -> dict[str, list[dict]]:
    """Per task, one run per (method, dim): kilotask's `auto` run where there is one (its
    default), else its best; a PEFT method's best over its rates."""
    chosen: dict[tuple, dict] = {}
    for run in runs:
        key = (run["task"], run["method"], run["dim"])
        old = chosen.get(key)
        auto = run["method"] in KILOTASK | {"full"} and run["lr"] == "auto"
        old_auto = old is not None and old["lr"] == "auto"
        better = run["best"] > old["best"] if old is not None else True
        if old is None or (auto and not old_auto) or (auto == old_auto and better):
            chosen[key] = run
    tasks: dict[str, list[dict]] = defaultdict(list)
    for (task, *_), run in sorted(chosen.items(), key=lambda kv: kv[1]["bytes"]):
        tasks[task].append(run)
    return tasks


def frontier_best(points: list[dict], family: set[str] | None, limit: int) -> float | None:
    """The best metric of a family (None: every non-kilotask method) within `limit` bytes."""
    inside = [
        p["best"]
        for p in points
        if p["bytes"] <= limit
        and (p["method"] in family if family else p["method"] not in KILOTASK | {"full"})
    ]
    return max(inside) if inside else None


def draw(task: str, points: list[dict], limit: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for p in points:
        ours = p["method"] in KILOTASK
        label = f"{p['method']} d={p['dim']}" if ours else p["method"]
        marker, color = ("o", "tab:blue") if ours else ("s", "tab:orange")
        if p["method"] == "full":
            marker, color = "^", "tab:gray"
        ax.scatter(p["bytes"], p["best"], marker=marker, color=color, zorder=3)
        ax.annotate(label, (p["bytes"], p["best"]), textcoords="offset points", xytext=(4, 3),
                    fontsize=7)  # fmt: skip
    ax.axvline(limit, color="tab:red", linestyle=":", linewidth=1, label=f"{limit // 1000} KB")
    ax.set_xscale("log")
    ax.set_xlabel("bytes stored per task (classifier head included)")
    ax.set_ylabel(points[0]["metric"])
    ax.set_title(f"{task}: dev metric vs bytes (blue: kilotask, orange: PEFT, grey: full)")
    ax.title.set_fontsize(9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    for suffix in (".png", ".svg"):
        fig.savefig(out / f"{task}{suffix}", dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("accuracy-charts"))
    parser.add_argument("--limit", type=int, default=100_000, help="bytes (default 100 KB)")
    args = parser.parse_args()
    runs = [run for f in args.files for run in json.loads(f.read_text())["runs"]]
    args.out.mkdir(parents=True, exist_ok=True)
    for task, points in best_points(runs).items():
        draw(task, points, args.limit, args.out)
        ours = frontier_best(points, KILOTASK, args.limit)
        theirs = frontier_best(points, None, args.limit)
        print(json.dumps({"task": task, "kilotask_below_limit": ours, "peft_below_limit": theirs,
                          "kilotask_above": None if ours is None or theirs is None
                          else ours > theirs}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
