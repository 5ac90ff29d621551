"""d90 search (paper §3): the smallest subspace dimension d whose metric reaches 90 % of full
fine-tuning, each d given a small learning-rate search as in the paper.

The search is a pure function of the results of its runs: it asks `run(kind, d, lr)` (and
`run(kind, d, lr, seed)` for extra seeds) for a metric only when `done` lacks that run's key, so
replaying it over the results of a killed search skips every finished run and continues where
it stopped (resume). Order: full fine-tuning over its learning-rate grid (the bar), then every
d of a log-spaced sweep (all of them, so that a d that fails above a passing one shows), then
bisection in log space between the largest failing d and d90 until hi / lo <= 1 + tolerance.

What a result means (see `conclude`): d90 is the smallest passing d above which every trained d
passes. When the pass/fail order is not monotone in d, `monotone` is False, `violations` lists
the offending pairs and `first_pass` is the smallest passing d. `censored` is "left" when the
smallest searched d already passes (d90 <= min_d) and "right" when no d up to max_d passes for
good (d90 > max_d). With `seeds` > 1, a d whose metric lies within one standard error of the bar
is trained with more seeds and passes on their mean.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

# Four learning rates per d, as in the paper. On this project's runs the best subspace learning
# rate was 0.2 (SST-2, SAID and lowrank) or 0.05 (MRPC, DID and lowrank), never 0.5 (it left
# SAID on MRPC at the majority class, and cost lowrank 13 points on SST-2); larger d want
# smaller rates. docs/INTRINSIC_DIMENSION.md has the runs.
LR_GRID = (0.02, 0.05, 0.1, 0.2)
EPS = 1e-9  # so that hi / lo = 1.1 meets a tolerance of 0.1 despite rounding


@dataclass(frozen=True)
class D90Plan:
    method: str = "said"  # "said" or "did"
    min_d: int = 10
    max_d: int = 100_000
    sweep_points: int = 5  # log-spaced d values from min_d to max_d
    tolerance: float = 0.1  # stop when hi / lo <= 1 + tolerance (or hi - lo <= 1)
    threshold: float = 0.9  # the bar, as a share of the full fine-tuning metric
    lr_grid: tuple[float, ...] = LR_GRID
    full_lr_grid: tuple[float, ...] = (2e-5, 5e-5)
    seeds: int = 1  # seeds for a d whose metric is within one standard error of the bar

    def sweep(self) -> list[int]:
        """Log-spaced, increasing, distinct integers from min_d to max_d inclusive."""
        if self.sweep_points < 2 or self.min_d >= self.max_d:
            return sorted({self.min_d, self.max_d})
        ratio = math.log(self.max_d / self.min_d) / (self.sweep_points - 1)
        return sorted({round(self.min_d * math.exp(i * ratio)) for i in range(self.sweep_points)})

    def settings(self) -> dict:
        """asdict without `seeds` when it is 1, so that searches from before seeds existed keep
        their fingerprint (and resume)."""
        out = asdict(self)
        if self.seeds == 1:
            del out["seeds"]
        return out


@dataclass
class DPoint:
    d: int
    metric: float  # best over the learning-rate grid; the mean over seeds when it has several
    lr: float  # the learning rate that gave it (seed 0's best)
    passed: bool  # metric >= bar
    sd: float | None = None  # sample standard deviation over seeds (None for one seed)
    seeds: list[float] = field(default_factory=list)  # each seed's metric at lr, seed 0 first
    stderr: float | None = None  # standard error of seed 0's dev metric (None: unknown)
    near_bar: bool = False  # seed 0's metric is within one stderr of the bar


@dataclass
class D90Result:
    plan: dict
    full_metric: float
    full_lr: float
    bar: float
    points: list[DPoint] = field(default_factory=list)  # in the order they were evaluated
    d90: int | None = None  # smallest passing d above which all trained d pass; None: none
    bracket: tuple[int, int] | None = None  # (largest failing d below d90, d90)
    floor: float | None = None  # what always predicting the majority class scores
    degenerate: bool = False  # the bar is at or below the floor: no d can be told apart
    finished: bool = False
    censored: str | None = None  # "left": d90 <= min_d; "right": d90 > max_d (when finished)
    d90_text: str | None = None  # d90 for people: "416", "<= 106", "> 6400" (when finished)
    monotone: bool = True  # no trained d fails above a passing one
    violations: list[dict] = field(default_factory=list)  # passing d, larger failing d
    first_pass: int | None = None  # smallest passing d (d90 when monotone)
    notes: list[str] = field(default_factory=list)  # sentences on censoring, order, close calls

    def to_dict(self) -> dict:
        return asdict(self)


# (kind "full" or the method, d, lr), plus the seed index when it is not 0
Run = tuple[str, int, float] | tuple[str, int, float, int]
RunFn = Callable[..., float]  # run(kind, d, lr[, seed]) -> its metric
# Runs several independent runs (e.g. one d's learning rates), possibly at once on several
# workers; yields each (run, metric) as it finishes, in any order.
BatchFn = Callable[[list[Run]], Iterable[tuple[Run, float]]]


def run_key(kind: str, d: int, lr: float, seed: int = 0) -> str:
    """Seed 0's key has no seed part, as before seeds existed: old searches resume."""
    key = f"{kind}:d={d}:lr={lr:g}"
    return key if seed == 0 else f"{key}:seed={seed}"


def search_d90(
    plan: D90Plan,
    run: RunFn,
    done: dict[str, float] | None = None,
    on_result: Callable[[str, float], None] | None = None,
    on_point: Callable[[D90Result], None] | None = None,
    floor: float | None = None,
    run_batch: BatchFn | None = None,
    stderr: Callable[[float], float | None] | None = None,
) -> D90Result:
    """Run the search; `done` holds metrics of runs already finished (by key), `on_result` is
    called after each new run (persist it there), `on_point` after each finished d. If the bar
    is not above `floor` (the majority-class score), full fine-tuning learned too little for a
    d90 to mean anything: the search stops there with `degenerate` set instead of reporting the
    smallest d as d90. `run_batch`, if given, runs the learning rates of one d together.
    `stderr(metric)` is the standard error of a dev metric: a d whose best metric is within
    one of the bar is trained with `plan.seeds - 1` more seeds at its best learning rate, and
    passes if their mean reaches the bar."""
    done = dict(done or {})
    batch = run_batch or (lambda runs: ((r, run(*r)) for r in runs))

    def metrics(runs: list[Run]) -> list[float]:
        missing = [r for r in runs if run_key(*r) not in done]
        for r, value in batch(missing) if missing else ():
            done[run_key(*r)] = float(value)
            if on_result is not None:
                on_result(run_key(*r), done[run_key(*r)])
        return [done[run_key(*r)] for r in runs]

    full = dict(
        zip(plan.full_lr_grid, metrics([("full", 0, lr) for lr in plan.full_lr_grid]), strict=True)
    )
    full_lr = max(full, key=full.__getitem__)
    result = D90Result(asdict(plan), full[full_lr], full_lr, plan.threshold * full[full_lr])
    result.floor = floor
    if floor is not None and result.bar <= floor:
        result.degenerate = result.finished = True
        result.notes = [
            f"Full fine-tuning reached {result.full_metric:.4f}, so the bar ({result.bar:.4f}) "
            f"is not above always predicting the majority class ({floor:.4f}): no d90."
        ]
        return result

    def evaluate(d: int) -> None:
        lrs = plan.lr_grid
        scores = dict(zip(lrs, metrics([(plan.method, d, lr) for lr in lrs]), strict=True))
        best = max(scores, key=scores.__getitem__)
        se = stderr(scores[best]) if stderr is not None else None
        near = se is not None and abs(scores[best] - result.bar) <= se
        values = [scores[best]]
        if near and plan.seeds > 1:
            values += metrics([(plan.method, d, best, s) for s in range(1, plan.seeds)])
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else None
        point = DPoint(d, mean, best, mean >= result.bar, sd, values, se, near)
        result.points.append(point)
        conclude(result)
        if on_point is not None:
            on_point(result)

    for d in plan.sweep():
        evaluate(d)
    while result.bracket is not None:
        lo, hi = result.bracket
        if hi / lo <= 1 + plan.tolerance + EPS or hi - lo <= 1:
            break
        evaluate(min(max(round(math.sqrt(lo * hi)), lo + 1), hi - 1))
    result.finished = True
    conclude(result)
    return result


def conclude(result: D90Result) -> D90Result:
    """Set d90, the bracket, the order check and (once finished) censoring and notes from the
    points trained so far. d90 is the smallest passing d above which every trained d passes: the
    only reading under which "larger d pass" holds for what was measured."""
    by_d = {p.d: p for p in result.points}
    points = [by_d[d] for d in sorted(by_d)]
    result.d90 = None
    for p in reversed(points):
        if not p.passed:
            break
        result.d90 = p.d
    below = [p.d for p in points if not p.passed and (result.d90 is None or p.d < result.d90)]
    result.bracket = (max(below), result.d90) if below and result.d90 is not None else None
    result.first_pass = next((p.d for p in points if p.passed), None)
    result.violations = []
    last_pass = None
    for p in points:
        if p.passed:
            last_pass = p
        elif last_pass is not None:
            result.violations.append({"passed_d": last_pass.d, "passed_metric": last_pass.metric,
                                      "failed_d": p.d, "failed_metric": p.metric})  # fmt: skip
    result.monotone = not result.violations
    if result.finished and not result.degenerate:
        _finish_notes(result, points)
    return result


def _finish_notes(result: D90Result, points: list[DPoint]) -> None:
    plan = result.plan
    min_d, max_d = plan["min_d"], plan["max_d"]
    notes = []
    if not points:
        result.censored, result.d90_text = None, None
    elif result.d90 is None:
        result.censored, result.d90_text = "right", f"> {max_d}"
        notes.append(
            f"Right-censored: no d up to max_d = {max_d} reaches the bar ({result.bar:.4f})"
            + (" with every larger d passing" if result.first_pass is not None else "")
            + f", so d90 > {max_d}; search higher (--max-d) if the method allows."
        )
    elif result.d90 <= min_d:
        result.censored, result.d90_text = "left", f"<= {min_d}"
        notes.append(
            f"Left-censored: the smallest d searched ({min_d}) already reaches the bar, so "
            f"d90 <= {min_d}, not = {min_d}; search lower (--min-d) if the method allows "
            "(SAID's range starts at its number of scales + 1)."
        )
    else:
        result.censored, result.d90_text = None, str(result.d90)
    if not result.monotone:
        pairs = ", ".join(
            f"d = {v['passed_d']} passed ({v['passed_metric']:.4f}) but d = {v['failed_d']} "
            f"failed ({v['failed_metric']:.4f})"
            for v in result.violations[:3]
        ) + (f" (and {len(result.violations) - 3} more)" if len(result.violations) > 3 else "")
        notes.append(
            f"Not monotone in d: {pairs}. d90 is the smallest passing d above which every "
            f"trained d passes ({result.d90_text}); the smallest passing d is "
            f"{result.first_pass}."
        )
    decisive = {result.d90, *(result.bracket or ())} - {None}
    for p in points:
        if p.d in decisive and p.near_bar and len(p.seeds) <= 1:
            notes.append(
                f"d = {p.d} {'passes' if p.passed else 'fails'} by "
                f"{abs(p.metric - result.bar):.4f}, within one standard error of the dev "
                f"metric ({p.stderr:.4f}): another seed could decide it the other way "
                "(--seeds 3 trains more seeds for such points)."
            )
    result.notes = notes


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
