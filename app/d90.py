"""A d90 search on real data with its files: what `kilotask d90` and the worker both run.

Everything lands in one folder: `state.json` (every finished run's metric, written after each
run, so a killed search resumes without redoing them), `runs/` (each run's task file),
`results.json`, `points.csv`, `curve.png` and `curve.svg` (metric against d with the 90 % line,
like the paper's Figure 1) and `d90-task.safetensors` (the smallest passing task).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from app.engine.data import LabelledText
from app.engine.errors import EngineError, SubspaceConfigError
from app.engine.intrinsic import D90Plan, D90Result, DPoint, Run, conclude, dev_stderr, search_d90
from app.engine.pipeline import TrainRequest, train_task
from app.engine.task_types import OutputSpace, fit_output_space
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
    metric: str = "accuracy"  # accuracy, f1 or mcc (CoLA); regression: pearson or spearman
    seed: int = 0
    options: tuple[tuple[str, object], ...] = ()  # method options (said_groups; lowrank: rank…)
    precision: str = "fp32"  # every run's TrainConfig.precision: fp32 or bf16
    device: str | None = None  # the device type every run trains on (run_d90 sets it)
    task_type: str | None = None  # None: classification (app/engine/task_types.py)

    def _settings(self) -> dict:
        """asdict without what older searches did not record, when it has the value they all
        had, so their folders still match: empty options, SAID's said_groups "tensor" (the only
        SAID before groupings), precision fp32 and device cpu (what a search on CPU ran)."""
        out = asdict(self)
        options = [(k, v) for k, v in self.options if (k, v) != ("said_groups", "tensor")]
        if not options:
            del out["options"]
        else:
            out["options"] = [[k, list(v) if isinstance(v, tuple) else v] for k, v in options]
        if self.precision == "fp32":
            del out["precision"]
        if self.device in (None, "cpu"):
            del out["device"]
        if self.task_type in (None, "classification"):
            del out["task_type"]
        return out

    def space(self, train: LabelledText) -> OutputSpace:
        """The output space every run of this search trains (from the training labels)."""
        return fit_output_space(self.task_type, train.labels or [])

    def fingerprint(self, plan: D90Plan, train: LabelledText, eval_: LabelledText) -> str:
        return _digest([self._settings(), plan.settings()], train, eval_)

    def runs_fingerprint(self, plan: D90Plan, train: LabelledText, eval_: LabelledText) -> str:
        """What fixes a run's result besides (kind, d, lr), whatever the method and the d range
        searched: searches that share it can share runs (full fine-tuning ones; method runs
        only when the method options match too, see `load_reusable`)."""
        settings = {k: v for k, v in self._settings().items() if k != "options"}
        return _digest([settings, list(plan.full_lr_grid)], train, eval_)

    def context(self) -> dict[str, str | None]:
        """Device type and precision: runs that differ in them are never mixed in a search."""
        return {"device": self.device, "precision": self.precision}


def resolve_setup(setup: D90Setup, method: str, device: str) -> D90Setup:
    """`setup` with its device type set (refused if it names another) and SAID's grouping
    made explicit (its default is "layer")."""
    import torch

    from app.engine.groups import DEFAULT_SAID_GROUPS

    kind = torch.device(device).type
    if setup.device is not None and setup.device != kind:
        raise SearchMismatchError(
            f"this search trains on {setup.device}, this run would be on {kind}: a search never "
            "mixes CPU and CUDA runs"
        )
    options = dict(setup.options)
    if method == "said":
        options.setdefault("said_groups", DEFAULT_SAID_GROUPS)
    return replace(setup, device=kind, options=tuple(sorted(options.items())))


def _check_context(saved: dict, setup: D90Setup, what: str) -> None:
    """Name the first of device type and precision in which `saved` (a state's context)
    differs from `setup`'s; states from before contexts existed have none to compare."""
    for key, value in setup.context().items():
        if key in saved and saved[key] != value:
            raise SearchMismatchError(
                f"{what} trained with {key} {saved[key]}, this search uses {value}: a search "
                "never mixes fp32 and bf16, or CPU and CUDA runs"
            )


def _digest(settings: list, train: LabelledText, eval_: LabelledText) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for data in (train, eval_):
        h.update(json.dumps([data.texts, data.text_pairs, data.labels]).encode())
    return h.hexdigest()


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)  # atomic: a kill never leaves half a state file


def load_state(out: Path, fingerprint: str, setup: D90Setup | None = None) -> dict[str, float]:
    path = out / STATE
    if not path.exists():
        return {}
    state = json.loads(path.read_text())
    if setup is not None:
        _check_context(state.get("context") or {}, setup, f"the search in {out}")
    if state.get("fingerprint") != fingerprint:
        old_said = "context" not in state and dict((setup or D90Setup("", 0)).options).get(
            "said_groups"
        ) not in (None, "tensor")
        raise SearchMismatchError(
            f"{out} holds a d90 search with other settings or data; "
            "use another --out folder (or delete it to start over)"
            + (
                " (a SAID search from before SAID groupings had one λ per tensor: "
                "--said-groups tensor resumes it)"
                if old_said
                else ""
            )
        )
    return dict(state["runs"])


def load_reusable(
    source: Path, runs_fingerprint: str, method: str, setup: D90Setup | None = None
) -> dict[str, float]:
    """The finished runs of the search in `source` that this search would do the same way: its
    full fine-tuning (the bar) and its runs of `method` when it had the same method options
    (`setup`'s; SAID's grouping, lowrank's rank…). Their task files come along."""
    path = source / STATE
    if not path.exists():
        raise SearchMismatchError(f"--reuse: {source} holds no d90 search ({STATE} missing)")
    state = json.loads(path.read_text())
    kinds = ("full", method)
    if setup is not None:
        _check_context(state.get("context") or {}, setup, f"--reuse: the search in {source}")
        if state.get("options", []) != setup._settings().get("options", []):
            kinds = ("full",)  # its method runs trained another way: only its bar is reusable
    if state.get("runs_fingerprint") != runs_fingerprint:
        raise SearchMismatchError(
            f"--reuse: {source} trained with other settings or data (model, budget, batch "
            "size, max length, metric, seed, full learning rates and data must match)"
        )
    runs = {k: v for k, v in state["runs"].items() if k.split(":")[0] in kinds}
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
    setup = resolve_setup(setup, plan.method, device)
    plan = feasible(plan, setup, train)
    fingerprint = setup.fingerprint(plan, train, eval_)
    runs_fingerprint = setup.runs_fingerprint(plan, train, eval_)
    done = load_state(out, fingerprint, setup)
    reused = (
        {} if reuse is None else load_reusable(Path(reuse), runs_fingerprint, plan.method, setup)
    )
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for key in reused.keys() - done.keys():
        source = Path(reuse) / "runs" / task_file_name(*parse_run_key(key))
        if source.exists():
            shutil.copyfile(source, out / "runs" / source.name)
    done = reused | done
    emit = on_event or (lambda kind, data: None)

    def run_here(kind: str, d: int, lr: float, seed: int = 0) -> tuple[float, bytes | None]:
        emit("run_started", {"kind": kind, "d": d, "lr": lr} | ({"seed": seed} if seed else {}))
        value, task = train_run(setup, train, eval_, (kind, d, lr, seed), device, callbacks)
        if task is not None:
            (out / "runs" / task_file_name(kind, d, lr, seed)).write_bytes(task)
        return value, task

    def run_batch(runs: list[Run]) -> Iterable[tuple[Run, float]]:
        # Extra seeds run here: the run board (workers/d90_board.py) keys runs by (kind, d, lr).
        first = [r for r in runs if len(r) == 3]
        for r, value, task in spread(first, run_here) if first else ():
            path = out / "runs" / task_file_name(*r)
            if task is not None and not path.exists():  # a run done here is already saved
                path.write_bytes(task)
            yield r, value
        for r in runs:
            if len(r) > 3:
                yield r, run_here(*r)[0]

    def on_result(key: str, value: float) -> None:
        done[key] = value
        state = {"fingerprint": fingerprint, "runs_fingerprint": runs_fingerprint, "runs": done}
        state |= {"context": setup.context(), "options": setup._settings().get("options", [])}
        _write_json(out / STATE, state)
        emit("run_finished", {"run": key, setup.metric: value})

    def on_point(result: D90Result) -> None:
        emit("point", asdict(result.points[-1]) | {"partial": result.to_dict()})

    floor = setup.space(train).constant_score(train.labels, eval_.labels, setup.metric)
    result = search_d90(
        plan,
        lambda *r: run_here(*r)[0],
        done,
        on_result,
        on_point,
        floor,
        run_batch if spread is not None else None,
        metric_stderr(train, eval_, setup.metric),
    )
    write_outputs(out, setup, result, done, scale_info(setup, plan.method, train))
    summary = {"d90": result.d90, "bracket": result.bracket, "degenerate": result.degenerate,
               "censored": result.censored, "d90_text": result.d90_text,
               "monotone": result.monotone}  # fmt: skip
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
    """One run of a search: its metric, and its task file (None for full fine-tuning). Seed k
    (the optional fourth element, 0 if absent) trains with model seed setup.seed + k (the
    projection and the classifier head) and data seed k (data order and dropout masks)."""
    kind, d, lr, *rest = run
    seed = rest[0] if rest else 0
    resolve_setup(setup, kind, device)  # refuses a device type other than the search's
    config = TrainConfig(
        method=kind,
        max_steps=setup.budget_steps,
        learning_rate=lr,
        batch_size=setup.batch_size,
        metric=setup.metric,
        eval_every=setup.budget_steps,
        data_seed=seed,
        precision=setup.precision,
    )
    req = TrainRequest(
        setup.model,
        train,
        eval_,
        max(d, 1),
        setup.seed + seed,
        setup.max_length,
        config=config,
        task_type=setup.task_type,
        options={} if kind == "full" else dict(setup.options),
    )
    outcome = train_task(req, callbacks, device=device)
    task = outcome.artifact.to_bytes() if outcome.artifact is not None else None
    return outcome.metrics[setup.metric], task


def metric_stderr(
    train: LabelledText, eval_: LabelledText, metric: str
) -> Callable[[float], float | None]:
    """The standard error of a dev metric value on `eval_` (engine.intrinsic.dev_stderr); a
    binary F1 is of the second label in sorted order, as app.engine.metrics scores it, and
    more labels give macro-F1."""
    labels = eval_.labels or []
    positives = None
    if metric == "f1":
        from app.engine.data import label_names_from

        names = label_names_from((train.labels or []) + labels)
        positives = sum(label == names[1] for label in labels) if len(names) == 2 else None
    return lambda value: dev_stderr(metric, value, len(labels), positives)


@functools.lru_cache(maxsize=8)
def _dim_range(
    model: str, num_labels: int, seed: int, method: str, options: tuple
) -> tuple[int, int]:
    from app.engine.base import load_base
    from app.engine.methods import TaskSettings, get_method

    base = load_base(model, num_labels, seed)
    settings = TaskSettings.of(method, 1, seed, **dict(options))
    return get_method(method).dim_range(base.model, base.seeded, settings)


def _method_range(setup: D90Setup, method: str, train: LabelledText) -> tuple[int, int]:
    return _dim_range(setup.model, setup.space(train).size, setup.seed, method, setup.options)


def scale_info(setup: D90Setup, method: str, train: LabelledText) -> dict:
    """m (how many of d are scales: SAID's λ, lowrank's per-target scales, 0 for DID) and
    SAID's grouping, as results.json states them."""
    return {"m": _method_range(setup, method, train)[0] - 1,
            "said_groups": dict(setup.options).get("said_groups")}  # fmt: skip


def feasible(plan: D90Plan, setup: D90Setup, train: LabelledText) -> D90Plan:
    """Methods with scales spend m of d on them (SAID: one per layer group or per tensor), so
    d starts above m; max_d stays within what the method accepts (D, or lowrank's projection
    size)."""
    low, top = _method_range(setup, plan.method, train)
    high = min(plan.max_d, top)
    if low >= high:
        groups = dict(setup.options).get("said_groups")
        per = f", one per {groups} group," if groups and plan.method == "said" else ""
        why = f" ({plan.method.upper()} needs d > {low - 1}: its {low - 1} scales{per} count in d)"
        raise SubspaceConfigError(
            f"no d to search for {plan.method}: the range [{low}, {high}] is empty"
            + (why if low > 1 else "")
        )
    return replace(plan, min_d=max(plan.min_d, low), max_d=high)


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
    _write_json(out / "results.json", {"setup": asdict(setup)} | (scales or {}) | results)
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


def upgrade_results(results: dict) -> dict:
    """A results dict (results.json, a job's metrics) written before censoring, seeds and the
    order check existed, with those fields filled in from its points (engine conclude); a
    current one (or one with no search yet) comes back as it is."""
    if "monotone" in results or "plan" not in results or "bar" not in results:
        return results
    points = [DPoint(**p) for p in results.get("points", [])]
    for p in points:
        p.seeds = p.seeds or [p.metric]
    kept = {k: results[k] for k in ("floor", "degenerate", "finished") if k in results}
    head = [results[k] for k in ("plan", "full_metric", "full_lr", "bar")]
    new = conclude(D90Result(*head, points, **kept)).to_dict()
    old = {k: v for k, v in results.items() if k != "points"}
    return old | {k: v for k, v in new.items() if k not in old}


def read_results(out: str | os.PathLike) -> dict:
    """The results.json of a search folder, old or new (upgrade_results)."""
    return upgrade_results(json.loads((Path(out) / "results.json").read_text()))


def _spaced_labels(ds: list[int], keep: int | None = None, min_frac: float = 0.045) -> list[str]:
    """A label for each d, blank where it would overlap one already shown: bisection puts
    points a few percent apart on a log axis. `keep` (d90) is labelled first, then the ends,
    then the rest in order; a label needs `min_frac` of the axis' log span to its neighbours."""
    span = max(math.log10(ds[-1] / ds[0]), 1e-9) if ds else 1.0
    order = [d for d in (keep, ds[0] if ds else None, ds[-1] if ds else None) if d in ds]
    shown: list[int] = []
    for d in order + ds:
        if d not in shown and all(abs(math.log10(d / o)) / span >= min_frac for o in shown):
            shown.append(d)
    return [str(d) if d in shown else "" for d in ds]


def curve_figure(results: dict, metric: str):
    """The curve as a matplotlib figure from a results dict (D90Result.to_dict(), possibly
    partial, or an old one): metric vs d (log scale) with each seeded point's sd, the full
    fine-tuning level, the bar, d90 (marked when censored) and the d that fail above a passing
    one (when the order is not monotone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = upgrade_results(results)
    points = sorted(results.get("points", []), key=lambda p: p["d"])
    fig, ax = plt.subplots(figsize=(6, 4))
    method = results.get("plan", {}).get("method", "subspace")
    ax.plot([p["d"] for p in points], [p["metric"] for p in points], "o-", label=method)
    seeded = [p for p in points if p.get("sd") is not None]
    if seeded:
        n = max(len(p.get("seeds") or ()) for p in seeded)
        ax.errorbar([p["d"] for p in seeded], [p["metric"] for p in seeded],
                    yerr=[p["sd"] for p in seeded], fmt="none", ecolor="C0", capsize=3,
                    label=f"mean ± sd over {n} seeds")  # fmt: skip
    failed = sorted({v["failed_d"] for v in results.get("violations") or ()})
    if failed:
        by_d = {p["d"]: p["metric"] for p in points}
        ax.plot(failed, [by_d[d] for d in failed], "x", color="red", markersize=10,
                markeredgewidth=2, label="fails above a passing d (not monotone)")  # fmt: skip
    if results.get("full_metric") is not None:
        ax.axhline(results["full_metric"], color="grey", linestyle="--", label="full fine-tuning")
        share = results.get("plan", {}).get("threshold", 0.9)
        ax.axhline(results["bar"], color="red", linestyle=":", label=f"{share:.0%} bar")
    if results.get("floor") is not None:
        constant = metric in ("pearson", "spearman")  # regression: a constant prediction
        ax.axhline(results["floor"], color="black", alpha=0.3,
                   label="constant prediction" if constant else "majority class")  # fmt: skip
    censored = results.get("censored")
    if results.get("d90") is not None:
        label = f"d90 = {results['d90']}"
        if censored == "left":
            label = f"d90 ≤ {results['d90']} (left-censored)"
        ax.axvline(results["d90"], color="green", alpha=0.5, label=label)
    elif censored == "right" and points:
        top = results.get("plan", {}).get("max_d", points[-1]["d"])
        ax.axvline(top, color="orange", linestyle="-.", label=f"d90 > {top} (right-censored)")
    if censored in ("left", "right") and points:  # an arrow into the side where d90 lies
        left = censored == "left"
        edge = results["d90"] if left else top
        ax.annotate(f"← d90 ≤ {edge}" if left else f"d90 > {edge} →", xy=(edge, 0.5),
                    xycoords=("data", "axes fraction"), xytext=(6 if left else -6, 0),
                    textcoords="offset points", ha="left" if left else "right", va="center",
                    color="green" if left else "darkorange", fontsize="small")  # fmt: skip
    if points:  # a log axis needs data (a degenerate search has none)
        ax.set_xscale("log")
        # Label the d values trained, not the decades: a search often spans less than one
        # decade, which leaves a log axis with no labelled tick at all.
        ds = sorted({p["d"] for p in points})
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ds))
        labels = _spaced_labels(ds, results.get("d90"))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter(labels))
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
