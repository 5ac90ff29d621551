"""d90 search logic with synthetic metrics: sweep, bisection bracket, learning-rate search,
and resume from the results of a killed search."""

import pytest

from app.engine.intrinsic import D90Plan, run_key, search_d90


def step_metric(threshold_d: int, full: float = 0.9, low: float = 0.5):
    """Metric 'full' for d >= threshold_d, 'low' below; full fine-tuning gets 'full'."""

    def run(kind: str, d: int, lr: float) -> float:
        if kind == "full":
            return full
        return full if d >= threshold_d else low

    return run


def test_sweep_is_log_spaced_and_inclusive():
    assert D90Plan(min_d=10, max_d=100_000, sweep_points=5).sweep() == [
        10,
        100,
        1000,
        10_000,
        100_000,
    ]
    assert D90Plan(min_d=150, max_d=20_000, sweep_points=4).sweep() == [150, 766, 3915, 20_000]


@pytest.mark.parametrize("threshold_d", [11, 57, 3000, 99_999])
def test_bisection_brackets_the_threshold(threshold_d):
    plan = D90Plan(min_d=10, max_d=100_000, tolerance=0.25, lr_grid=(0.1,), full_lr_grid=(1e-5,))
    result = search_d90(plan, step_metric(threshold_d))
    lo, hi = result.bracket
    assert lo < threshold_d <= hi and (hi / lo <= 1.25 or hi - lo == 1)
    assert result.d90 == hi and result.finished
    assert result.bar == pytest.approx(0.81)
    assert all(p.passed == (p.d >= threshold_d) for p in result.points)


def test_nothing_passes_and_min_d_passes():
    plan = D90Plan(min_d=10, max_d=1000, lr_grid=(0.1,), full_lr_grid=(1e-5,))
    none = search_d90(plan, step_metric(10**9))
    assert none.d90 is None and none.bracket is None and none.finished
    assert [p.d for p in none.points] == plan.sweep()
    first = search_d90(plan, step_metric(1))
    assert first.d90 == 10 and first.bracket is None and len(first.points) == 1


def test_each_d_keeps_its_best_learning_rate():
    def run(kind, d, lr):
        if kind == "full":
            return {1e-5: 0.7, 3e-5: 0.9}[lr]
        return 0.9 - abs(lr - 0.2) if d >= 500 else 0.3  # best lr is 0.2

    plan = D90Plan(min_d=100, max_d=10_000, lr_grid=(0.05, 0.2, 0.5), full_lr_grid=(1e-5, 3e-5))
    result = search_d90(plan, run)
    assert result.full_lr == 3e-5 and result.full_metric == 0.9
    passing = [p for p in result.points if p.passed]
    assert passing and all(p.lr == 0.2 and p.metric == pytest.approx(0.9) for p in passing)


def test_resume_skips_finished_runs_and_ends_the_same():
    plan = D90Plan(min_d=10, max_d=100_000, lr_grid=(0.1, 0.3), full_lr_grid=(1e-5,))
    whole = search_d90(plan, step_metric(3000))

    class Killed(Exception):
        pass

    saved: dict[str, float] = {}
    calls = []

    def dies_after_five(kind, d, lr):
        if len(calls) == 5:
            raise Killed
        calls.append(run_key(kind, d, lr))
        return step_metric(3000)(kind, d, lr)

    with pytest.raises(Killed):
        search_d90(plan, dies_after_five, on_result=saved.__setitem__)
    assert len(saved) == 5

    again = []

    def counting(kind, d, lr):
        again.append(run_key(kind, d, lr))
        return step_metric(3000)(kind, d, lr)

    resumed = search_d90(plan, counting, done=saved)
    assert not set(again) & set(saved)  # nothing finished is run twice
    assert len(saved) + len(again) == len(set(saved) | set(again))
    assert resumed.d90 == whole.d90 and resumed.bracket == whole.bracket
    assert [p.d for p in resumed.points] == [p.d for p in whole.points]


def test_a_bar_not_above_the_majority_floor_stops_the_search():
    plan = D90Plan(min_d=10, max_d=1000, lr_grid=(0.1,), full_lr_grid=(1e-5,))
    calls = []

    def run(kind, d, lr):
        calls.append(kind)
        return 0.55 if kind == "full" else 0.6

    result = search_d90(plan, run, floor=0.51)  # bar 0.495 <= majority 0.51
    assert result.degenerate and result.finished and result.d90 is None
    assert calls == ["full"] and result.points == []
    assert not search_d90(plan, step_metric(100), floor=0.5).degenerate
