"""A d90 search on real data with its files: what `kilotask d90` and the worker both run.

Everything lands in one folder: `state.json` (every finished run's metric, written after each
run, so a killed search resumes without redoing them), `runs/` (each run's task file),
`results.json`, `points.csv`, `curve.png` and `curve.svg` (metric against d with the 90 % line,
like the paper's Figure 1) and `d90-task.safetensors` (the smallest passing task).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from app.engine.data import LabelledText
from app.engine.errors import EngineError, SubspaceConfigError
from app.engine.intrinsic import D90Plan, D90Result, Run, search_d90
from app.engine.pipeline import TrainRequest, train_task
from app.engine.trainer import TrainCallbacks, TrainConfig

STATE = "state.json"

# Given some runs and a way to do one here, runs them (here or on other workers) and yields
# (run, metric, task file bytes or None) as each finishes.
SpreadFn = Callable[
    [list[Run], Callable[[str, int, float], tuple[float, bytes | None]]],
    Iterable[tuple[Run, float, bytes | None]],
]


class SearchMismatchError(EngineError):
    """The output folder holds a search with other settings: resuming it would mix results."""


@dataclass(frozen=True)
class D90Setup:
    """What fixes every run's result, besides d and the learning rate."""

    model: str
    budget_steps: int
    batch_size: int = 32
    max_length: int = 128
    metric: str = "accuracy"  # accuracy, f1 or mcc (CoLA)
    seed: int = 0
    options: tuple[tuple[str, object], ...] = ()  # method options (lowrank: rank, targets)

    def _settings(self) -> dict:
        """asdict without empty options, so searches from before options existed still match."""
        out = asdict(self)
        if not self.options:
            del out["options"]
        else:
            out["options"] = [[k, list(v) if isinstance(v, tuple) else v] for k, v in self.options]
        return out

    def fingerprint(self, plan: D90Plan, train: LabelledText, eval_: LabelledText) -> str:
        return _digest([self._settings(), asdict(plan)], train, eval_)

    def runs_fingerprint(self, plan: D90Plan, train: LabelledText, eval_: LabelledText) -> str:
        """What fixes a run's result besides (kind, d, lr), whatever the method and the d range
        searched: searches that share it can share runs."""
        return _digest([self._settings(), list(plan.full_lr_grid)], train, eval_)


def _digest(settings: list, train: LabelledText, eval_: LabelledText) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for data in (train, eval_):
        h.update(json.dumps([data.texts, data.text_pairs, data.labels]).encode())
    return h.hexdigest()


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)  # atomic: a kill never leaves half a state file


def load_state(out: Path, fingerprint: str) -> dict[str, float]:
    path = out / STATE
    if not path.exists():
        return {}
    state = json.loads(path.read_text())
    if state.get("fingerprint") != fingerprint:
        raise SearchMismatchError(
            f"{out} holds a d90 search with other settings or data; "
            "use another --out folder (or delete it to start over)"
        )
    return dict(state["runs"])


def load_reusable(source: Path, runs_fingerprint: str, method: str) -> dict[str, float]:
    """The finished runs of the search in `source` that this search would do the same way: its
    full fine-tuning (the bar) and its runs of `method`. Their task files come along."""
    path = source / STATE
    if not path.exists():
        raise SearchMismatchError(f"--reuse: {source} holds no d90 search ({STATE} missing)")
    state = json.loads(path.read_text())
    if state.get("runs_fingerprint") != runs_fingerprint:
        raise SearchMismatchError(
            f"--reuse: {source} trained with other settings or data (model, budget, batch "
            "size, max length, metric, seed, full learning rates and data must match)"
        )
    runs = {k: v for k, v in state["runs"].items() if k.split(":")[0] in ("full", method)}
    if not runs:
        raise SearchMismatchError(f"--reuse: {source} has no finished full or {method} run yet")
    return runs


def run_d90(
    setup: D90Setup,
    plan: D90Plan,
    train: LabelledText,
    eval_: LabelledText,
    out: str | os.PathLike,
    device: str = "cpu",
    callbacks: TrainCallbacks | None = None,
    on_event: Callable[[str, dict], None] | None = None,
    reuse: str | os.PathLike | None = None,
    spread: SpreadFn | None = None,
) -> D90Result:
    """Search d90, resuming from `out` if it holds an unfinished search with the same setup.
    `reuse` names another search folder whose finished runs are taken instead of redone: the
    full fine-tuning (the bar) of a SAID search for a DID one on the same data, or the points
    of an earlier search of the same method over another d range.
    `spread` runs the learning rates of one d together (on several workers); without it every
    run happens here, one after another."""
    out = Path(out)
    plan = feasible(plan, setup, train)
    fingerprint = setup.fingerprint(plan, train, eval_)
    runs_fingerprint = setup.runs_fingerprint(plan, train, eval_)
    done = load_state(out, fingerprint)
    reused = {} if reuse is None else load_reusable(Path(reuse), runs_fingerprint, plan.method)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for key in reused.keys() - done.keys():
        source = Path(reuse) / "runs" / task_file_name(*parse_run_key(key))
        if source.exists():
            shutil.copyfile(source, out / "runs" / source.name)
    done = reused | done
    emit = on_event or (lambda kind, data: None)

    def run_here(kind: str, d: int, lr: float) -> tuple[float, bytes | None]:
        emit("run_started", {"kind": kind, "d": d, "lr": lr})
        value, task = train_run(setup, train, eval_, (kind, d, lr), device, callbacks)
        if task is not None:
            (out / "runs" / task_file_name(kind, d, lr)).write_bytes(task)
        return value, task

    def run_batch(runs: list[Run]) -> Iterable[tuple[Run, float]]:
        for r, value, task in spread(runs, run_here):
            path = out / "runs" / task_file_name(*r)
            if task is not None and not path.exists():  # a run done here is already saved
                path.write_bytes(task)
            yield r, value

    def on_result(key: str, value: float) -> None:
        done[key] = value
        state = {"fingerprint": fingerprint, "runs_fingerprint": runs_fingerprint, "runs": done}
        _write_json(out / STATE, state)
        emit("run_finished", {"run": key, setup.metric: value})

    def on_point(result: D90Result) -> None:
        emit("point", asdict(result.points[-1]) | {"partial": result.to_dict()})

    floor = majority_score(train, eval_, setup.metric)
    result = search_d90(
        plan,
        lambda kind, d, lr: run_here(kind, d, lr)[0],
        done,
        on_result,
        on_point,
        floor,
        run_batch if spread is not None else None,
    )
    write_outputs(out, setup, result, done)
    summary = {"d90": result.d90, "bracket": result.bracket, "degenerate": result.degenerate}
    emit("finished", summary)
    return result


def train_run(
    setup: D90Setup,
    train: LabelledText,
    eval_: LabelledText,
    run: Run,
    device: str = "cpu",
    callbacks: TrainCallbacks | None = None,
) -> tuple[float, bytes | None]:
    """One run of a search: its metric, and its task file (None for full fine-tuning)."""
    kind, d, lr = run
    config = TrainConfig(
        method=kind,
        max_steps=setup.budget_steps,
        learning_rate=lr,
        batch_size=setup.batch_size,
        metric=setup.metric,
        eval_every=setup.budget_steps,
    )
    req = TrainRequest(
        setup.model,
        train,
        eval_,
        max(d, 1),
        setup.seed,
        setup.max_length,
        config=config,
        options={} if kind == "full" else dict(setup.options),
    )
    outcome = train_task(req, callbacks, device=device)
    task = outcome.artifact.to_bytes() if outcome.artifact is not None else None
    return outcome.metrics[setup.metric], task


def majority_score(train: LabelledText, eval_: LabelledText, metric: str) -> float:
    """The metric of always predicting the training set's most frequent label on `eval_`."""
    from collections import Counter

    from app.engine.data import label_names_from
    from app.engine.metrics import classification_metrics

    names = label_names_from((train.labels or []) + (eval_.labels or []))
    index = {name: i for i, name in enumerate(names)}
    majority = Counter(train.labels).most_common(1)[0][0]
    truth = [index[label] for label in eval_.labels or []]
    return classification_metrics([index[majority]] * len(truth), truth, len(names))[metric]


def feasible(plan: D90Plan, setup: D90Setup, train: LabelledText) -> D90Plan:
    """Methods with scales spend m of d on them (SAID: one per tensor), so d starts above m;
    max_d stays within what the method accepts (D, or lowrank's projection size)."""
    from app.engine.base import load_base
    from app.engine.data import label_names_from
    from app.engine.methods import TaskSettings, get_method

    base = load_base(setup.model, len(label_names_from(train.labels or [])), setup.seed)
    settings = TaskSettings.of(plan.method, plan.min_d, setup.seed, **dict(setup.options))
    low, top = get_method(plan.method).dim_range(base.model, base.seeded, settings)
    high = min(plan.max_d, top)
    if low >= high:
        why = f" ({plan.method.upper()} needs d > {low - 1}: its scales count in d)"
        raise SubspaceConfigError(
            f"no d to search for {plan.method}: the range [{low}, {high}] is empty"
            + (why if low > 1 else "")
        )
    return replace(plan, min_d=max(plan.min_d, low), max_d=high)


def parse_run_key(key: str) -> Run:
    kind, d, lr = key.split(":")
    return kind, int(d.removeprefix("d=")), float(lr.removeprefix("lr="))


def task_file_name(kind: str, d: int, lr: float) -> str:
    return f"{kind}-d{d}-lr{lr:g}.safetensors"


def write_outputs(out: Path, setup: D90Setup, result: D90Result, runs: dict[str, float]) -> None:
    _write_json(out / "results.json", {"setup": asdict(setup)} | result.to_dict())
    with open(out / "points.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "d", "lr", setup.metric])
        for key, value in runs.items():
            kind, d, lr = parse_run_key(key)
            writer.writerow([kind, d, f"{lr:g}", f"{value:.6f}"])
    if result.d90 is not None:
        best = next(p for p in result.points if p.d == result.d90)
        source = out / "runs" / task_file_name(result.plan["method"], best.d, best.lr)
        if source.exists():
            shutil.copyfile(source, out / "d90-task.safetensors")
    plot_curve(result, setup.metric, out / "curve")


def curve_figure(results: dict, metric: str):
    """The curve as a matplotlib figure from a results dict (D90Result.to_dict(), possibly
    partial): metric vs d (log scale), the full fine-tuning level and the bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(results.get("points", []), key=lambda p: p["d"])
    fig, ax = plt.subplots(figsize=(6, 4))
    method = results.get("plan", {}).get("method", "subspace")
    ax.plot([p["d"] for p in points], [p["metric"] for p in points], "o-", label=method)
    if results.get("full_metric") is not None:
        ax.axhline(results["full_metric"], color="grey", linestyle="--", label="full fine-tuning")
        share = results.get("plan", {}).get("threshold", 0.9)
        ax.axhline(results["bar"], color="red", linestyle=":", label=f"{share:.0%} bar")
    if results.get("floor") is not None:
        ax.axhline(results["floor"], color="black", alpha=0.3, label="majority class")
    if results.get("d90") is not None:
        ax.axvline(results["d90"], color="green", alpha=0.5, label=f"d90 = {results['d90']}")
    if points:  # a log axis needs data (a degenerate search has none)
        ax.set_xscale("log")
        # Label the d values trained, not the decades: a search often spans less than one
        # decade, which leaves a log axis with no labelled tick at all.
        ds = sorted({p["d"] for p in points})
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ds))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(d) for d in ds]))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.tick_params(axis="x", labelrotation=45 if len(ds) > 6 else 0)
    ax.set_xlabel("subspace dimension d")
    ax.set_ylabel(metric)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def curve_bytes(results: dict, metric: str, fmt: str = "png") -> bytes:
    import io

    import matplotlib.pyplot as plt

    fig = curve_figure(results, metric)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    plt.close(fig)
    return buf.getvalue()


def plot_curve(result: D90Result, metric: str, stem: Path) -> None:
    """PNG and SVG of the curve, like the paper's Figure 1."""
    for fmt in ("png", "svg"):
        stem.with_suffix(f".{fmt}").write_bytes(curve_bytes(result.to_dict(), metric, fmt))
