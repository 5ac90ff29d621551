"""A d90 search on real data with its files: what `kilotask d90` and the worker both run.

Everything lands in one folder: `state.json` (every finished run's metric, written after each
run, so a killed search resumes without redoing them), `runs/` (each run's task file),
`results.json`, `points.csv`, `curve.png` and `curve.svg` (metric against d with the 90 % line,
like the paper's Figure 1) and `d90-task.safetensors` (the smallest passing task).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

from app.engine import step_size
from app.engine.data import LabelledText
from app.engine.pipeline import TrainRequest, train_task
from app.engine.trainer import TrainCallbacks, TrainConfig
from app.search.outputs import parse_run_key, task_file_name, write_json, write_outputs
from app.search.plan import D90Plan, D90Result, Run, search_d90
from app.search.setup import (
    D90Setup,
    SearchMismatchError,
    check_context,
    feasible,
    metric_stderr,
    resolve_setup,
    scale_info,
)

STATE = "state.json"

# Given some runs and a way to do one here, runs them (here or on other workers) and yields
# (run, metric, task file bytes or None) as each finishes.
SpreadFn = Callable[
    [list[Run], Callable[[str, int, float], tuple[float, bytes | None]]],
    Iterable[tuple[Run, float, bytes | None]],
]


def load_state(out: Path, fingerprint: str, setup: D90Setup | None = None) -> dict[str, float]:
    path = out / STATE
    if not path.exists():
        return {}
    state = json.loads(path.read_text())
    if setup is not None:
        check_context(state.get("context") or {}, setup, f"the search in {out}")
    if state.get("fingerprint") != fingerprint:
        old_said = "context" not in state and dict((setup or D90Setup("", 0)).options).get(
            "said_groups"
        ) not in (None, "tensor")
        hint = ""
        if old_said:
            hint = (" (a SAID search from before SAID groupings had one λ per tensor: "
                    "--said-groups tensor resumes it)")  # fmt: skip
        elif state.get("lr_rule") != step_size.RULE:
            hint = (" (it trained before the learning-rate rule, app/engine/step_size.py: "
                    f"--reuse {out} takes its full fine-tuning into a new folder)")  # fmt: skip
        raise SearchMismatchError(
            f"{out} holds a d90 search with other settings or data; "
            "use another --out folder (or delete it to start over)" + hint
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
        check_context(state.get("context") or {}, setup, f"--reuse: the search in {source}")
        if state.get("options", []) != setup.recorded_settings().get("options", []):
            kinds = ("full",)  # its method runs trained another way: only its bar is reusable
    if state.get("lr_rule") != step_size.RULE:
        kinds = ("full",)  # method runs from before the learning-rate rule: another step size
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
        options = setup.recorded_settings().get("options", [])
        state |= {"context": setup.context(), "options": options, "lr_rule": step_size.RULE}
        write_json(out / STATE, state)
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
