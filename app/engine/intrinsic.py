"""d90 search (paper §3): the smallest subspace dimension d whose metric reaches 90 % of full
fine-tuning, each d given a small learning-rate search as in the paper.

The search is a pure function of the results of its runs: it asks `run(kind, d, lr)` for a metric
only when `done` lacks that run's key, so replaying it over the results of a killed search skips
every finished run and continues where it stopped (resume). Order: full fine-tuning over its
learning-rate grid (the bar), then a log-spaced sweep of d upwards until one passes, then
bisection in log space between the largest failing and the smallest passing d until the bracket
is tight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class D90Plan:
    method: str = "said"  # "said" or "did"
    min_d: int = 10
    max_d: int = 100_000
    sweep_points: int = 5  # log-spaced d values from min_d to max_d
    tolerance: float = 0.25  # stop when hi / lo <= 1 + tolerance (or hi - lo <= 1)
    threshold: float = 0.9  # the bar, as a share of the full fine-tuning metric
    lr_grid: tuple[float, ...] = (0.05, 0.2, 0.5)
    full_lr_grid: tuple[float, ...] = (2e-5, 5e-5)

    def sweep(self) -> list[int]:
        """Log-spaced, increasing, distinct integers from min_d to max_d inclusive."""
        if self.sweep_points < 2 or self.min_d >= self.max_d:
            return sorted({self.min_d, self.max_d})
        ratio = math.log(self.max_d / self.min_d) / (self.sweep_points - 1)
        return sorted({round(self.min_d * math.exp(i * ratio)) for i in range(self.sweep_points)})


@dataclass
class DPoint:
    d: int
    metric: float  # best over the learning-rate grid
    lr: float  # the learning rate that gave it
    passed: bool


@dataclass
class D90Result:
    plan: dict
    full_metric: float
    full_lr: float
    bar: float
    points: list[DPoint] = field(default_factory=list)  # in the order they were evaluated
    d90: int | None = None  # smallest passing d seen; None when even max_d fails
    bracket: tuple[int, int] | None = None  # (largest failing d, smallest passing d)
    floor: float | None = None  # what always predicting the majority class scores
    degenerate: bool = False  # the bar is at or below the floor: no d can be told apart
    finished: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


Run = tuple[str, int, float]  # (kind "full" or the method, d, lr)
RunFn = Callable[[str, int, float], float]  # one run -> its metric
# Runs several independent runs (e.g. one d's learning rates), possibly at once on several
# workers; yields each (run, metric) as it finishes, in any order.
BatchFn = Callable[[list[Run]], Iterable[tuple[Run, float]]]


def run_key(kind: str, d: int, lr: float) -> str:
    return f"{kind}:d={d}:lr={lr:g}"


def search_d90(
    plan: D90Plan,
    run: RunFn,
    done: dict[str, float] | None = None,
    on_result: Callable[[str, float], None] | None = None,
    on_point: Callable[[D90Result], None] | None = None,
    floor: float | None = None,
    run_batch: BatchFn | None = None,
) -> D90Result:
    """Run the search; `done` holds metrics of runs already finished (by key), `on_result` is
    called after each new run (persist it there), `on_point` after each finished d. If the bar
    is not above `floor` (the majority-class score), full fine-tuning learned too little for a
    d90 to mean anything: the search stops there with `degenerate` set instead of reporting the
    smallest d as d90. `run_batch`, if given, runs the learning rates of one d together."""
    done = dict(done or {})
    batch = run_batch or (lambda runs: ((r, run(*r)) for r in runs))

    def metrics(kind: str, d: int, lrs: tuple[float, ...]) -> dict[float, float]:
        missing = [(kind, d, lr) for lr in lrs if run_key(kind, d, lr) not in done]
        for r, value in batch(missing) if missing else ():
            done[run_key(*r)] = float(value)
            if on_result is not None:
                on_result(run_key(*r), done[run_key(*r)])
        return {lr: done[run_key(kind, d, lr)] for lr in lrs}

    full = metrics("full", 0, plan.full_lr_grid)
    full_lr = max(full, key=full.__getitem__)
    result = D90Result(asdict(plan), full[full_lr], full_lr, plan.threshold * full[full_lr])
    result.floor = floor
    if floor is not None and result.bar <= floor:
        result.degenerate = result.finished = True
        return result

    def evaluate(d: int) -> bool:
        scores = metrics(plan.method, d, plan.lr_grid)
        best = max(scores, key=scores.__getitem__)
        passed = scores[best] >= result.bar
        result.points.append(DPoint(d, scores[best], best, passed))
        if passed and (result.d90 is None or d < result.d90):
            result.d90 = d
        if on_point is not None:
            on_point(result)
        return passed

    lo = None  # largest failing d below the smallest passing one
    for d in plan.sweep():
        if evaluate(d):
            break
        lo = d
    if result.d90 is None or lo is None:  # nothing passes, or min_d already passes
        result.finished = True
        return result
    hi = result.d90
    while hi / lo > 1 + plan.tolerance and hi - lo > 1:
        mid = min(max(round(math.sqrt(lo * hi)), lo + 1), hi - 1)
        if evaluate(mid):
            hi = mid
        else:
            lo = mid
    result.bracket = (lo, hi)
    result.d90 = hi
    result.finished = True
    return result
