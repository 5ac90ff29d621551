"""What a d90 search leaves in its folder besides its state: each run's task file by name,
`results.json` (with each point's train-sample metric and generalisation gap), `points.csv`,
the curve (app/search/curve.py) and `d90-task.safetensors`, the smallest passing task."""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from app.search.curve import plot_curve
from app.search.plan import D90Result, Run, upgrade_results
from app.search.setup import D90Setup


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)  # atomic: a kill never leaves half a state file


def parse_run_key(key: str) -> Run:
    """(kind, d, lr) for seed 0 (keys from before seeds existed too), (kind, d, lr, seed)
    for the others."""
    kind, d, lr, *seed = key.split(":")
    run = kind, int(d.removeprefix("d=")), float(lr.removeprefix("lr="))
    return (*run, int(seed[0].removeprefix("seed="))) if seed else run


def task_file_name(kind: str, d: int, lr: float, seed: int = 0) -> str:
    return f"{kind}-d{d}-lr{lr:g}" + (f"-seed{seed}" if seed else "") + ".safetensors"


def write_outputs(
    out: Path,
    setup: D90Setup,
    result: D90Result,
    runs: dict[str, float],
    scales: dict | None = None,
) -> None:
    """`scales`: m and SAID's grouping (scale_info), stated at the top of results.json."""
    results = with_generalisation(result.to_dict(), out, setup.metric)
    write_json(out / "results.json", {"setup": asdict(setup)} | (scales or {}) | results)
    with open(out / "points.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "d", "lr", "seed", setup.metric, f"train_{setup.metric}", "gap"])
        for key, value in runs.items():
            kind, d, lr, *seed = parse_run_key(key)
            seen = run_generalisation(out, (kind, d, lr, *seed), setup.metric)
            writer.writerow([kind, d, f"{lr:g}", seed[0] if seed else 0, f"{value:.6f}",
                             *(seen.get(k, "") for k in ("train_metric", "gap"))])  # fmt: skip
    if result.d90 is not None:
        best = next(p for p in result.points if p.d == result.d90)
        source = out / "runs" / task_file_name(result.plan["method"], best.d, best.lr)
        if source.exists():
            shutil.copyfile(source, out / "d90-task.safetensors")
    plot_curve(result, setup.metric, out / "curve")


def run_generalisation(out: Path, run: Run, metric: str) -> dict:
    """A finished run's train-sample metric and relative gap (paper §5.3), as its task file
    recorded them (4 decimals); {} for full fine-tuning (no task file) or older runs."""
    path = out / "runs" / task_file_name(*run)
    if not path.exists():
        return {}
    from app.engine.artifact import TaskArtifact
    from app.engine.errors import ArtifactFormatError

    try:
        recorded = TaskArtifact.load(path).metrics
    except ArtifactFormatError:  # not a task file: no gap to show, the search still finishes
        return {}
    seen = {"train_metric": recorded.get(f"train_{metric}"), "gap": recorded.get("gap")}
    return {k: v for k, v in seen.items() if v is not None}


def with_generalisation(results: dict, out: Path, metric: str) -> dict:
    """`results` with each point's train-sample metric and relative gap at its best learning
    rate (seed 0), and `gap_at_d90` for the d90 point: the paper's Figure 5 reads them."""
    method = results["plan"]["method"]
    points = [p | run_generalisation(out, (method, p["d"], p["lr"]), metric)
              for p in results.get("points", [])]  # fmt: skip
    results = results | {"points": points}
    at = next((p for p in points if p["d"] == results.get("d90")), None)
    if at is not None and "train_metric" in at:
        results["gap_at_d90"] = {k: at.get(k) for k in ("d", "metric", "train_metric", "gap")}
    return results


def read_results(out: str | os.PathLike) -> dict:
    """The results.json of a search folder, old or new (upgrade_results)."""
    return upgrade_results(json.loads((Path(out) / "results.json").read_text()))
